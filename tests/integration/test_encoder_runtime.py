"""The encoder runtime's length-bucketed, concurrent runs: same numbers as one padded batch, in input order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slmops.catalog.schema import Variant
from slmops.errors import GenerationParamsError
from slmops.quantize.recipes import Recipe
from slmops.runtime.card import read_model_card
from slmops.runtime.encoder import EmbeddingModel, RerankModel, length_buckets, pool
from slmops.runtime.open import open_folder
from slmops.runtime.session import create_session
from tests.support.tiny import build_candidates, build_tiny_cross_encoder, from_folder

# lengths from 1 word to 40, shuffled, with repeats: sorting by length reorders them and several runs are needed
WORDS = [
    "water",
    "boils",
    "at",
    "one",
    "hundred",
    "degrees",
    "while",
    "the",
    "stock",
    "market",
    "fell",
    "and",
    "plants",
    "use",
    "sunlight",
    "to",
    "grow",
]
TEXTS = [" ".join((WORDS * 3)[i : i + n]) for i, n in enumerate([7, 1, 40, 3, 3, 18, 2, 25, 9, 1, 33, 12, 5, 7, 21])]


@pytest.fixture(scope="module")
def built(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Variant]:
    root = tmp_path_factory.mktemp("encoder-runtime")
    return root, build_candidates(root, "tiny-bert", from_folder(*tiny_models["tiny-bert"]))


@pytest.fixture()
def bert(built: tuple[Path, Variant]) -> Path:
    return built[0]


def _model(folder: Path, *, workers: int) -> EmbeddingModel:
    card = read_model_card(folder)
    return EmbeddingModel(folder, card, create_session(folder / card.onnx_file, threads=1), workers=workers)


def _one_padded_batch(model: EmbeddingModel, texts: list[str]) -> np.ndarray:
    """What the runtime computed before bucketing: all texts in one run, padded to the longest."""
    feed = model._feed(texts)
    return pool(model.session.run(None, feed)[0], feed["attention_mask"])


def test_fusion_is_a_dynamic_int8_option() -> None:
    with pytest.raises(ValueError, match="fusion applies to method dynamic_int8 only"):
        Recipe(name="x", method="none", precision="fp32", tasks=["sentence-embedding"], devices=["cpu"], fusion="bert")


def test_length_buckets_cover_every_index_once_in_short_runs() -> None:
    lengths = [5, 30, 6, 6, 29, 5, 12, 31, 7, 5]
    runs = length_buckets(lengths, max_batch=4, run_cost=4)
    assert sorted(np.concatenate(runs).tolist()) == list(range(len(lengths)))
    assert all(1 <= len(run) <= 4 for run in runs)
    longest = [max(lengths[i] for i in run) for run in runs]
    assert longest == sorted(longest)  # shortest runs first, each padded to its own longest
    assert {frozenset(run.tolist()) for run in runs} >= {frozenset({1, 4, 7})}  # the long three share a run
    # no cost per run: a run per distinct length; a prohibitive one: the fewest runs max_batch allows
    assert len(length_buckets(lengths, max_batch=32, run_cost=0)) == len(set(lengths))
    assert len(length_buckets(lengths, max_batch=4, run_cost=10**9)) == 3
    assert len(length_buckets(lengths, max_batch=32, run_cost=10**9)) == 1


@pytest.mark.parametrize("recipe", ["fp32", "dyn-int8-pc"])
@pytest.mark.parametrize("workers", [1, 2])
def test_bucketed_embeddings_equal_one_padded_batch_in_input_order(bert: Path, recipe: str, workers: int) -> None:
    model = _model(bert / "cand" / recipe, workers=workers)
    got = model.embed(TEXTS, batch_size=4)
    assert got.shape == (len(TEXTS), 32) and got.dtype == np.float32
    reference = _one_padded_batch(model, TEXTS)
    cosine = (got * reference).sum(axis=1)
    if recipe == "fp32":
        assert np.abs(got - reference).max() < 1e-5
    else:  # dynamic int8 quantizes activations with one scale per run, so other runs give other roundings
        assert cosine.min() > 0.99
    assert (np.argmax(got @ reference.T, axis=1) == np.arange(len(TEXTS))).all()  # each row is its own text
    assert np.array_equal(model.embed(TEXTS, batch_size=4), got)  # the same runs again: the same numbers
    model.unload()


def test_embeddings_match_torch_whatever_the_batch_size(bert: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, ref = AutoTokenizer.from_pretrained(bert / "fetch"), AutoModel.from_pretrained(bert / "fetch").eval()
    with torch.inference_mode():
        enc = tok(TEXTS, padding=True, return_tensors="pt")
        hidden, mask = ref(**enc).last_hidden_state, enc["attention_mask"].unsqueeze(-1).float()
        expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    model = open_folder(bert / "cand" / "fp32", threads=2)
    assert model.workers == 2  # on CPU a call's runs go two at a time (runtime/encoder.py)
    # texts of one length still make a run per worker: each run holds at most an equal share
    shapes: list[tuple[int, ...]] = []
    run = model.session.run
    model.session.run = lambda out, feed: shapes.append(feed["input_ids"].shape) or run(out, feed)
    model.embed(["the same words"] * 8)
    assert [rows for rows, _ in shapes] == [4, 4]
    model.session.run = run
    for batch_size in (1, 3, 32):
        assert np.abs(model.embed(TEXTS, batch_size=batch_size) - expected).max() < 1e-5
    with pytest.raises(GenerationParamsError, match="batch_size=0"):
        model.embed(TEXTS, batch_size=0)
    model.unload()
    assert model._pool is None  # the run threads stop with the model


def test_rerank_scores_keep_the_document_order(tmp_path: Path) -> None:
    build_candidates(tmp_path, "tiny-ce", build_tiny_cross_encoder, recipes=("fp32",))
    folder = tmp_path / "cand" / "fp32"
    card = read_model_card(folder)
    model = RerankModel(folder, card, create_session(folder / card.onnx_file, threads=1), workers=2)
    query = "what is the boiling point of water"
    scores = model.scores(query, TEXTS, batch_size=4)
    one_by_one = np.array([model.scores(query, [doc])[0] for doc in TEXTS])
    # the tiny model's scores lie close together: the match must be far tighter than their spread, so that a
    # reordering would show
    assert scores.shape == (len(TEXTS),) and np.ptp(one_by_one) > 0
    assert np.abs(scores - one_by_one).max() < 0.01 * np.ptp(one_by_one)


def test_fused_int8_recipe_gives_the_same_embeddings(built: tuple[Path, Variant], tmp_path: Path) -> None:
    import onnx

    from slmops.quantize import load_recipes, quantize
    from tests.support.tiny import CONFIGS

    bert, variant = built
    fused = Recipe.model_validate(
        {**load_recipes(CONFIGS / "recipes.yaml")["dyn-int8-pc"].model_dump(), "fusion": "bert"}
    )
    quantize(variant, fused, src=bert / "export", out=tmp_path / "fused")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "fused" / "model.onnx")).graph.node}
    assert {"QAttention", "SkipLayerNormalization", "QEmbedLayerNormalization"} <= ops
    reference = _model(bert / "cand" / "fp32", workers=1).embed(TEXTS, batch_size=4)
    got = _model(tmp_path / "fused", workers=2).embed(TEXTS, batch_size=4)
    assert ((got * reference).sum(axis=1)).min() > 0.99
    assert (np.argmax(got @ reference.T, axis=1) == np.arange(len(TEXTS))).all()
