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
    fast = mixed.model_copy(update={"low_bits": mixed.low_bits.model_copy(update={"calibration_tokens": 1024})})
    for exporter in ("genai", "optimum"):
        export(variant, src=root / "fetch", out=root / exporter / "export", exporter=exporter)
        for recipe in (RECIPES["fp32"], RECIPES["wo-int8"], fast):
            quantize(variant, recipe, src=root / exporter / "export", out=root / exporter / recipe.name)
    return variant, root, fast


def _logits(folder: Path) -> np.ndarray:
    model = open_folder(folder)
    return model.logits(model.tokenizer.encode(TEXT))


@pytest.mark.parametrize("exporter", ["genai", "optimum"])
def test_gate_projections_are_4_bit_the_rest_8_bit_and_the_logits_stay_close(built, exporter: str) -> None:
    _, root, recipe = built
    graph = onnx.load(str(root / exporter / recipe.name / "model.onnx")).graph
    bits = {
        n.name: next(a.i for a in n.attribute if a.name == "bits") for n in graph.node if n.op_type == "MatMulNBits"
    }
    low = sorted(name for name, b in bits.items() if b == 4)
    assert len(low) == 2 and all("mlp/gate_proj" in name for name in low), bits  # one per layer of the tiny Llama
    assert len(bits) > len(low) and all(b == 8 for name, b in bits.items() if name not in low)
    plain = {n.name for n in graph.node if n.op_type == "MatMul"}
    int8_graph = onnx.load(str(root / exporter / "wo-int8" / "model.onnx"), load_external_data=False).graph
    assert plain == {n.name for n in int8_graph.node if n.op_type == "MatMul"}  # the rest exactly as wo-int8
    ref, int8, mixed = (_logits(root / exporter / name) for name in ("fp32", "wo-int8", recipe.name))
    scale = np.abs(ref).max()
    assert np.abs(int8 - ref).max() / scale < np.abs(mixed - ref).max() / scale < 0.15
    assert (mixed.argmax(-1) == ref.argmax(-1)).mean() >= 0.8


def test_a_pattern_matching_no_matmul_fails_and_leaves_nothing(built, tmp_path: Path) -> None:
    variant, root, recipe = built
    nothing = recipe.model_copy(update={"low_bits": recipe.low_bits.model_copy(update={"nodes": "mlp/no_such_proj"})})
    with pytest.raises(QuantizeError, match="low_bits.nodes 'mlp/no_such_proj' matches no MatMul"):
        quantize(variant, nothing, src=root / "genai" / "export", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
