"""Cross-encoders end to end on a tiny random one: optimum export, dynamic int8, Spearman gate, rerank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slmops.evaluate import evaluate, load_gates
from slmops.runtime.open import open_folder
from slmops.taskdefs.cross_encoder import outputs as rerank_outputs
from tests.support.tiny import CONFIGS, build_candidates, build_tiny_cross_encoder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cross")
    return build_candidates(root, "tiny-ce", build_tiny_cross_encoder), root


def test_export_matches_torch_and_reranks(built) -> None:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    _, root = built
    model = open_folder(root / "cand" / "fp32")
    assert model.card.task == "cross-encoder" and model.card.num_labels == 1
    docs = ["water boils at one hundred degrees", "the stock market fell", "plants use sunlight"]
    scores = model.scores("what is the boiling point of water", docs)
    tok = AutoTokenizer.from_pretrained(root / "fetch")
    ref = BertForSequenceClassification.from_pretrained(root / "fetch").eval()
    with torch.inference_mode():
        enc = tok(["what is the boiling point of water"] * 3, docs, padding=True, return_tensors="pt")
        expected = ref(**enc).logits[:, 0].numpy()
    assert np.abs(scores - expected).max() < 1e-4
    ranked = model.rerank("what is the boiling point of water", docs, top_k=2)
    assert [i for i, _ in ranked] == list(np.argsort(-expected)[:2]) and ranked[0][1] >= ranked[1][1]


def test_spearman_gate_on_the_quantized_candidate(built, tmp_path: Path) -> None:
    _, root = built
    report = evaluate(
        task="cross-encoder",
        candidates={r: root / "cand" / r for r in ("fp32", "dyn-int8-pc")},
        reference="fp32",
        gates=load_gates(CONFIGS / "gates.yaml"),
        out=tmp_path / "gates.json",
    ).model_dump(mode="json")
    assert report["candidates"]["fp32"]["metrics"]["spearman"] == pytest.approx(1.0)
    rho = report["candidates"]["dyn-int8-pc"]["metrics"]["spearman"]
    # the same correlation by the textbook formula 1 - 6 sum d^2 / (n (n^2 - 1)) over ordinal ranks, ties broken
    # by position as the gate breaks them (int8 scores do tie)
    scores = [rerank_outputs(open_folder(root / "cand" / r))["scores"] for r in ("dyn-int8-pc", "fp32")]
    ranks = [np.argsort(np.argsort(s, kind="stable"), kind="stable") for s in scores]
    d = ranks[0] - ranks[1]
    n = len(d)
    assert rho == pytest.approx(1 - 6 * float((d**2).sum()) / (n * (n**2 - 1)), abs=1e-9)
    assert report["candidates"]["dyn-int8-pc"]["passed"] == (rho >= 0.95)
