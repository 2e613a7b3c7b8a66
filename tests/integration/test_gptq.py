"""The low_bits recipe option: calibrated GPTQ 4-bit MatMuls inside an 8-bit graph, on both decoder graphs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from slmops.errors import QuantizeError
from slmops.export import export
from slmops.quantize import load_recipes, quantize
from slmops.runtime.open import open_folder
from tests.support.tiny import as_fetched

RECIPES = load_recipes(Path(__file__).resolve().parents[2] / "configs" / "recipes.yaml")
TEXT = "The sun rises in the east and sets in the west. Water boils at one hundred degrees."


@pytest.fixture(scope="module")
def built(tiny_models, tmp_path_factory: pytest.TempPathFactory):
    folder, facts = tiny_models["tiny-llama"]
    root = tmp_path_factory.mktemp("gptq")
    shutil.copytree(folder, root / "fetch")
    variant = as_fetched(root / "fetch", "tiny-llama", facts)
    mixed = RECIPES["wo-int8-gptq4"]
    fast = mixed.model_copy(
        update={"low_bits": [low.model_copy(update={"calibration_tokens": 1024}) for low in mixed.low_bits]}
    )
    for exporter in ("genai", "optimum"):
        export(variant, src=root / "fetch", out=root / exporter / "export", exporter=exporter)
        for recipe in (RECIPES["fp32"], RECIPES["wo-int8"], fast):
            quantize(variant, recipe, src=root / exporter / "export", out=root / exporter / recipe.name)
    return variant, root, fast


def _logits(folder: Path) -> np.ndarray:
    model = open_folder(folder)
    return model.logits(model.tokenizer.encode(TEXT))


@pytest.mark.parametrize("exporter", ["genai", "optimum"])
def test_gate_and_attention_projections_are_4_bit_the_rest_8_bit_and_the_logits_stay_close(
    built, exporter: str
) -> None:
    _, root, recipe = built
    graph = onnx.load(str(root / exporter / recipe.name / "model.onnx")).graph
    bits = {
        n.name: next(a.i for a in n.attribute if a.name == "bits") for n in graph.node if n.op_type == "MatMulNBits"
    }
    low = sorted(name for name, b in bits.items() if b == 4)
    # per layer of the tiny Llama: the MLP's gate, attention's o and its fused qkv (genai) or q, k and v (optimum)
    kinds = [
        "mlp/gate_proj",
        "attn/o_proj",
        *(["attn/qkv_proj"] if exporter == "genai" else ["q_proj", "k_proj", "v_proj"]),
    ]
    assert sorted(next(k for k in kinds if k in name) for name in low) == sorted(kinds * 2), bits
    assert len(bits) > len(low) and all(b == 8 for name, b in bits.items() if name not in low)
    plain = {n.name for n in graph.node if n.op_type == "MatMul"}
    int8_graph = onnx.load(str(root / exporter / "wo-int8" / "model.onnx"), load_external_data=False).graph
    assert plain == {n.name for n in int8_graph.node if n.op_type == "MatMul"}  # the rest exactly as wo-int8
    ref, int8, mixed = (_logits(root / exporter / name) for name in ("fp32", "wo-int8", recipe.name))
    # a tiny random Llama has no redundancy for 4 bits to hide in (SmolLM2: PPL +2.7%): mean error 0.04-0.05
    # (wo-int8) and 0.32 (this recipe) of the mean |logit|, argmax agreement 0.63, both graphs, 2026-12-02
    assert _error(int8, ref) < _error(mixed, ref) < 0.45
    assert (mixed.argmax(-1) == ref.argmax(-1)).mean() >= 0.5


def _error(logits: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(logits - ref).mean() / np.abs(ref).mean())


def test_a_pattern_matching_no_matmul_fails_and_leaves_nothing(built, tmp_path: Path) -> None:
    variant, root, recipe = built
    nothing = recipe.model_copy(
        update={"low_bits": [recipe.low_bits[0].model_copy(update={"nodes": "mlp/no_such_proj"})]}
    )
    with pytest.raises(QuantizeError, match="low_bits.nodes 'mlp/no_such_proj' matches no MatMul"):
        quantize(variant, nothing, src=root / "genai" / "export", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_two_patterns_matching_one_matmul_fail_and_leave_nothing(built, tmp_path: Path) -> None:
    variant, root, recipe = built
    low = recipe.low_bits[0]
    twice = recipe.model_copy(update={"low_bits": [low, low.model_copy(update={"nodes": "layers.0/mlp"})]})
    with pytest.raises(QuantizeError, match="matches two low_bits entries"):
        quantize(variant, twice, src=root / "genai" / "export", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_4_bit_lm_head_is_calibrated_and_the_tied_embedding_gathers_its_codes(built, tmp_path: Path) -> None:
    # genai only: optimum's export multiplies by a Transpose of the tied table, not a constant weight
    variant, root, recipe = built
    exporter = "genai"
    low = recipe.low_bits[0]
    head = recipe.model_copy(
        update={"name": "head4", "low_bits": [low, low.model_copy(update={"nodes": "^/lm_head/"})]}
    )
    quantize(variant, head, src=root / exporter / "export", out=tmp_path / "head4")
    graph = onnx.load(str(tmp_path / "head4" / "model.onnx")).graph
    outputs = {o.name for o in graph.output}
    (lm_head,) = [n for n in graph.node if n.op_type == "MatMulNBits" and n.output[0] in outputs]
    assert next(a.i for a in lm_head.attribute if a.name == "bits") == 4
    # the builder ties the embedding to the lm_head: it now gathers the 4-bit codes
    (gather,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    assert next(a.i for a in gather.attribute if a.name == "bits") == 4
    table = sorted(next(a.i for a in lm_head.attribute if a.name == key) for key in ("K", "N"))
    assert not [i.name for i in graph.initializer if sorted(i.dims) == table]  # the fp32 table is gone
    ref, mixed, both = (
        _logits(f) for f in (root / exporter / "fp32", root / exporter / recipe.name, tmp_path / "head4")
    )

    # the tiny random model's 4-bit head (and, tied, its 4-bit embedding) beside 4-bit gates: mean error 0.30 of
    # the mean |logit|, argmax agreement 0.68 (2026-12-02); only its gates at 4 bits: 0.09, 0.97
    assert _error(both, ref) < 0.5
    assert (both.argmax(-1) == ref.argmax(-1)).mean() >= 0.5


def test_the_first_token_weight_adds_each_window_first_position_to_the_hessian(built) -> None:
    from slmops.quantize.gptq import hessians
    from slmops.runtime.card import read_model_card

    _, root, _ = built
    export = root / "genai" / "export"
    model = onnx.load(str(export / "model.onnx"))
    (name,) = {n.input[0] for n in model.graph.node if "layers.0/mlp/gate_proj" in n.name}
    outputs = [o.name for o in model.graph.output]
    h = hessians(
        model,
        inputs=[(name, 1.0), (name, 9.0)],
        folder=export,
        card=read_model_card(export),
        tokens=64,
        window=64,
        threads=1,
    )
    assert [o.name for o in model.graph.output] == outputs  # the calibration outputs were added for the session only
    plain, weighted = h[(name, 1.0)], h[(name, 9.0)]
    first = weighted - plain  # one window: 8 * x0 x0^T, rank one
    x0 = first[:, np.argmax(np.diag(first))] / np.sqrt(np.diag(first).max())
    np.testing.assert_allclose(first, np.outer(x0, x0), atol=1e-6 * np.abs(first).max())
    assert np.diag(first).sum() > 0 and np.linalg.matrix_rank(plain) > 1


def test_bytes_per_weight_follow_the_bit_widths(built) -> None:
    from slmops.quantize.footprint import matmul_weight_bytes

    _, root, recipe = built
    fp32, int8, mixed = (
        matmul_weight_bytes(root / "genai" / name / "model.onnx") for name in ("fp32", "wo-int8", recipe.name)
    )
    # tiny Llama, hidden 64: wo-int8's blocks of 128 hold 64 weights (one fp32 scale each, the padding not counted)
    assert fp32 is None and int8 == pytest.approx(1 + 4 / 64, rel=0.02) and 0.6 < mixed < int8


def _changed_norms(before, after) -> list[str]:
    """Names of the norm weights (``*layernorm.weight``) that differ between two graphs, sorted."""
    from onnx import numpy_helper

    def norms(graph) -> dict[str, np.ndarray]:
        return {i.name: numpy_helper.to_array(i) for i in graph.initializer if "layernorm.weight" in i.name}

    old, new = norms(before), norms(after)
    return sorted(name for name in old if not np.array_equal(old[name], new[name]))


def test_activation_scales_fold_into_the_genai_norms_without_changing_the_fp32_logits(built, tmp_path: Path) -> None:
    import re

    from slmops.quantize.gptq import fold_activation_scales, hessians
    from slmops.quantize.ort import save_onnx
    from slmops.runtime.card import read_model_card

    _, root, recipe = built
    export = root / "genai" / "export"
    model = onnx.load(str(export / "model.onnx"))
    entries = {"mlp/gate_proj": recipe.low_bits[0], "attn/qkv_proj": recipe.low_bits[1]}
    targets = {
        n.name: (n, entry)
        for n in model.graph.node
        for pattern, entry in entries.items()
        if n.op_type == "MatMul" and re.search(pattern, n.name)
    }
    h = hessians(
        model,
        inputs=sorted({(n.input[0], e.first_token_weight) for n, e in targets.values()}),
        folder=export,
        card=read_model_card(export),
        tokens=256,
        window=64,
        threads=1,
    )
    before = onnx.load(str(export / "model.onnx")).graph
    codes = fold_activation_scales(model, targets, h, alphas=[0.5])  # alpha forced above 0: every norm scales
    assert sorted(codes) == sorted(targets)
    changed = _changed_norms(before, model.graph)
    # per layer of two: the norm before qkv (input_layernorm) and the one before gate and up (post_attention_layernorm)
    kinds = sorted(re.sub(r"layers\.\d+", "layers.N", name) for name in changed)
    assert kinds == sorted(
        ["model.layers.N.input_layernorm.weight", "model.layers.N.post_attention_layernorm.weight"] * 2
    )
    shutil.copytree(export, tmp_path / "scaled", ignore=shutil.ignore_patterns("model.onnx*"))
    save_onnx(model, tmp_path / "scaled" / "model.onnx")
    scaled = open_folder(tmp_path / "scaled", verify=False)
    ref = _logits(export)
    np.testing.assert_allclose(scaled.logits(scaled.tokenizer.encode(TEXT)), ref, atol=1e-4 * np.abs(ref).max())


def test_a_recipe_with_awq_alphas_scales_the_norms_and_keeps_the_logits_close(built, tmp_path: Path) -> None:

    variant, root, recipe = built
    scaled = recipe.model_copy(update={"name": "awq", "awq_alphas": [0.5]})  # one exponent above 0: every norm
    assert "gptq+awq" in scaled.granularity
    quantize(variant, scaled, src=root / "genai" / "export", out=tmp_path / "awq")

    changed = _changed_norms(
        onnx.load(str(root / "genai" / "export" / "model.onnx")).graph,
        onnx.load(str(tmp_path / "awq" / "model.onnx")).graph,
    )
    assert len(changed) == 4 and all("input_layernorm" in n or "post_attention_layernorm" in n for n in changed)
    ref, plain, awq = (_logits(f) for f in (root / "genai" / "fp32", root / "genai" / recipe.name, tmp_path / "awq"))
    # the tiny random model (hidden 64, one block per row): mean error 0.3 of the mean |logit| with or without
    assert _error(awq, ref) < 0.45 and (awq.argmax(-1) == ref.argmax(-1)).mean() >= 0.5
    assert not np.array_equal(awq, plain)
