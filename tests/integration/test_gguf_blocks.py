"""The gguf_blocks recipe: a GGUF's own Q4_1/Q8_0 blocks as MatMulNBits, on a tiny Llama written as GGUF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from slmops.artifacts import read_manifest
from slmops.errors import QuantizeError
from slmops.export import export
from slmops.fetch.sources import gguf_to_hf
from slmops.quantize import load_recipes, quantize
from slmops.runtime.open import open_folder
from tests.support.tiny import as_fetched

RECIPES = load_recipes(Path(__file__).resolve().parents[2] / "configs" / "recipes.yaml")
TEXT = "The sun rises in the east and sets in the west. Water boils at one hundred degrees."


@pytest.fixture(scope="module")
def built(tiny_models, tmp_path_factory: pytest.TempPathFactory):
    from tests.support.tiny import build_tiny_gguf

    folder, facts = tiny_models["tiny-llama"]
    root = tmp_path_factory.mktemp("gguf-blocks")
    build_tiny_gguf(folder, root / "tiny.gguf")
    gguf_to_hf(root / "tiny.gguf", root / "fetch")
    variant = as_fetched(root / "fetch", "tiny-llama", facts, source="gguf")
    export(variant, src=root / "fetch", out=root / "export", exporter="genai")
    exact_fp32 = RECIPES["gguf-q4"].model_copy(update={"name": "exact-fp32", "accuracy_level": 0})
    dropped = RECIPES["gguf-q4"].model_copy(update={"name": "dropped", "accuracy_level": 0, "remainder": "drop"})
    augmented = RECIPES["gguf-q4"].model_copy(update={"name": "augmented", "accuracy_level": 0, "remainder": "augment"})
    for recipe in (RECIPES["fp32"], RECIPES["gguf-q4"], exact_fp32, dropped, augmented):
        quantize(variant, recipe, src=root / "export", out=root / "cand" / recipe.name, fetched=root / "fetch")
    return variant, root


def _logits(folder: Path) -> np.ndarray:
    model = open_folder(folder)
    return model.logits(model.tokenizer.encode(TEXT))


def test_gguf_blocks_reproduce_the_dequantized_weights(built) -> None:
    _, root = built
    ref = _logits(root / "cand" / "fp32")
    scale = np.abs(ref).max()
    exact = np.abs(_logits(root / "cand" / "exact-fp32") - ref).max() / scale
    dropped = np.abs(_logits(root / "cand" / "dropped") - ref).max() / scale
    augmented = np.abs(_logits(root / "cand" / "augmented") - ref).max() / scale
    assert exact < 1e-4  # the original codes + remainder path: the fp32 graph up to rounding
    assert dropped > 30 * exact  # rounding the zero point (what RTN re-quantization does) is not
    assert augmented < dropped / 5
    int8_compute = _logits(root / "cand" / "gguf-q4")
    assert (int8_compute.argmax(-1) == ref.argmax(-1)).mean() > 0.9


def test_every_matmul_is_mapped_and_the_folder_is_complete(built) -> None:
    _, root = built
    folder = root / "cand" / "gguf-q4"
    manifest = read_manifest(folder, verify=True)
    assert manifest.info["recipe"] == "gguf-q4" and (folder / "recipe.json").is_file()
    graph = onnx.load(str(folder / "model.onnx")).graph
    ops = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(ops) == 2 * 5 + 1  # qkv, o, gate, up, down per layer + lm_head
    bits = sorted({a.i for n in ops for a in n.attribute if a.name == "bits"})
    assert bits == [4, 8]  # Q4_1 body, Q8_0 tied embedding as lm_head
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.input[1].endswith(".weight")]
    # the Q8_0 token table is gathered quantized; no fp32 copy of it (or of any weight matrix) is left
    assert [n.op_type for n in graph.node if n.input and n.input[-1] == "input_ids" or "input_ids" in n.input][:1] == [
        "GatherBlockQuantized"
    ]
    assert "Transpose" not in {n.op_type for n in graph.node}
    assert max(int(np.prod(i.dims)) for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT) < 64 * 64


def test_gguf_blocks_need_the_gguf(built, tmp_path: Path) -> None:
    variant, root = built
    with pytest.raises(QuantizeError, match=r"holds no \.gguf file.*source: gguf"):
        quantize(variant, RECIPES["gguf-q4"], src=root / "export", out=tmp_path / "out", fetched=tmp_path)
    assert not (tmp_path / "out").exists()
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(QuantizeError, match="not a readable GGUF file"):
        quantize(variant, RECIPES["gguf-q4"], src=root / "export", out=tmp_path / "out", fetched=tmp_path)
    assert not (tmp_path / "out").exists()


def test_graphs_over_the_protobuf_limit_use_external_data(
    built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the 2 GB limit lowered to 1 byte, every quantizer writes model.onnx + model.onnx.data that still runs."""
    import slmops.quantize.ort as ort_quantizers

    variant, root = built
    for name in ("gguf-q4", "wo-int8"):
        quantize(variant, RECIPES[name], src=root / "export", out=tmp_path / "inline" / name, fetched=root / "fetch")
    monkeypatch.setattr(ort_quantizers, "MAX_PROTO_BYTES", 1)
    for name in ("gguf-q4", "wo-int8"):
        out, inline = tmp_path / "external" / name, tmp_path / "inline" / name
        quantize(variant, RECIPES[name], src=root / "export", out=out, fetched=root / "fetch")
        assert not (inline / "model.onnx.data").exists()
        assert (out / "model.onnx.data").stat().st_size > (out / "model.onnx").stat().st_size
        assert "model.onnx.data" in read_manifest(out, verify=True).files
        assert np.abs(_logits(out) - _logits(inline)).max() < 1e-5
