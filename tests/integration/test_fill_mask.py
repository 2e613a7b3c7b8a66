"""Fill-mask end to end on a tiny random BertForMaskedLM: optimum export checked against torch, dynamic int8,
the top-1/top-5 gate, and the runtime's fill_mask against torch and transformers' pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slmops.artifacts import read_manifest
from slmops.errors import GenerationParamsError
from slmops.evaluate import evaluate, load_gates
from slmops.runtime.open import open_folder
from slmops.taskdefs.fill_mask import masked_sentences
from tests.support.tiny import CONFIGS, build_candidates, build_tiny_masked_lm

TEXTS = [
    "Water boils at one hundred [MASK] at sea level.",
    "Paris is the [MASK] of France.",
    "Plants use [MASK] and water to make [MASK].",  # two masks: one result list each
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fillmask")
    return build_candidates(root, "tiny-mlm", build_tiny_masked_lm), root


def _torch_mask_logits(root: Path, text: str) -> tuple[np.ndarray, np.ndarray]:
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(root / "fetch")
    model = BertForMaskedLM.from_pretrained(root / "fetch").eval()
    enc = tok(text, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**enc).logits[0]
    positions = (enc["input_ids"][0] == tok.mask_token_id).nonzero()[:, 0]
    return logits[positions].numpy(), positions.numpy()


def test_export_is_checked_against_torch(built) -> None:
    _, root = built
    checked = read_manifest(root / "export").info["validation"]
    assert set(checked) == {"logits"}
    assert checked["logits"]["max_abs_diff"] < 1e-4 <= checked["logits"]["limit"]
    assert "[MASK]" in checked["logits"]["inputs"]


def test_fill_mask_top_k_equals_torch(built) -> None:
    _, root = built
    model = open_folder(root / "cand" / "fp32")
    assert model.card.task == "fill-mask" and model.mask_token == "[MASK]"
    for text in TEXTS:
        expected, positions = _torch_mask_logits(root, text)
        results = model.fill_mask(text, top_k=5)
        assert len(results) == len(positions)
        ((_, logits),) = model.mask_logits(text)
        assert np.abs(logits - expected).max() < 1e-4
        for row, ref in zip(results, expected, strict=False):
            probs = np.exp(ref - ref.max()) / np.exp(ref - ref.max()).sum()
            assert [r["token"] for r in row] == list(np.argsort(-ref)[:5])
            assert [r["score"] for r in row] == pytest.approx(list(np.sort(probs)[::-1][:5]), abs=1e-5)


def test_fill_mask_output_matches_the_transformers_pipeline(built) -> None:
    from transformers import pipeline

    _, root = built
    model = open_folder(root / "cand" / "fp32")
    hf = pipeline("fill-mask", model=str(root / "fetch"), top_k=3, device="cpu")
    for text in TEXTS:
        expected = hf(text)
        expected = [expected] if isinstance(expected[0], dict) else expected  # one mask: a flat list
        ours = model.fill_mask(text, top_k=3)
        for row, ref in zip(ours, expected, strict=True):
            assert [(r["token"], r["token_str"], r["sequence"]) for r in row] == [
                (e["token"], e["token_str"], e["sequence"]) for e in ref
            ]
            assert [r["score"] for r in row] == pytest.approx([e["score"] for e in ref], abs=1e-5)


def test_fill_mask_validates_its_input(built) -> None:
    _, root = built
    model = open_folder(root / "cand" / "fp32")
    with pytest.raises(GenerationParamsError, match=r"no mask token; put '\[MASK\]'"):
        model.fill_mask("Paris is the capital of France.")
    with pytest.raises(GenerationParamsError, match=r"no mask token; put '\[MASK\]'"):
        model.fill_mask("Paris is the <mask> of France.")
    for bad in (0, -1, True, 2.5):
        with pytest.raises(GenerationParamsError, match=rf"top_k={bad!r} must be an integer of at least 1"):
            model.fill_mask("Paris is the [MASK] of France.", top_k=bad)
    assert len(model.fill_mask("Paris is the [MASK] of France.", top_k=10_000)[0]) == model.tokenizer.vocab_size


def test_top1_top5_gate_on_the_quantized_candidate(built, tmp_path: Path) -> None:
    _, root = built
    gates = load_gates(CONFIGS / "gates.yaml")
    report = evaluate(
        task="fill-mask",
        candidates={r: root / "cand" / r for r in ("fp32", "dyn-int8-pc")},
        reference="fp32",
        gates=gates,
        out=tmp_path / "gates.json",
    ).model_dump(mode="json")
    fp32 = report["candidates"]["fp32"]["metrics"]
    assert fp32["top1_agreement"] == 1.0 and fp32["top5_overlap"] == 1.0 and fp32["masks"] > 50
    int8 = report["candidates"]["dyn-int8-pc"]
    # the same numbers recomputed from both models' logits at each mask of the gate's sentences (batched as the
    # gate batches them: dynamic int8 scales activations per batch, so one sentence at a time differs a little)
    top5 = {}
    for recipe in ("fp32", "dyn-int8-pc"):
        rows = open_folder(root / "cand" / recipe).mask_logits(masked_sentences("[MASK]"))
        top5[recipe] = [list(np.argsort(-logits[0])[:5]) for _, logits in rows]
    pairs = list(zip(top5["dyn-int8-pc"], top5["fp32"], strict=True))
    assert int8["metrics"]["top1_agreement"] == pytest.approx(np.mean([a[0] == b[0] for a, b in pairs]))
    assert int8["metrics"]["top5_overlap"] == pytest.approx(np.mean([len(set(a) & set(b)) / 5 for a, b in pairs]))
    expected = (
        int8["metrics"]["top1_agreement"] >= gates.gate("fill-mask").min_top1_agreement
        and int8["metrics"]["top5_overlap"] >= gates.gate("fill-mask").min_top5_overlap
    )
    assert int8["passed"] == expected and (int8["reasons"] == []) == expected


def test_pyfunc_and_benchmark_serve_fill_mask(built) -> None:
    import json
    from types import SimpleNamespace

    from slmops.names import ARTIFACT_KEY
    from slmops.register.pyfunc import SlmopsModel
    from slmops.tasks import get_task

    _, root = built
    pyfunc = SlmopsModel()
    pyfunc.load_context(SimpleNamespace(artifacts={ARTIFACT_KEY: str(root / "cand" / "fp32")}))
    out = pyfunc.predict(None, {"text": [TEXTS[1]]}, params={"top_k": 2})
    assert json.loads(out[0]) == pyfunc.model.fill_mask(TEXTS[1], top_k=2)
    assert [p.name for p in get_task("fill-mask").impl().signature().params.params] == ["top_k"]
    spec = {"items": 8, "batch_sizes": [1, 4], "warmup": 0, "repeats": 1}
    result = get_task("fill-mask").impl().bench(open_folder(root / "cand" / "dyn-int8-pc"), spec)
    assert result["items_per_s"] > 0 and result["batch_size"] == 4
