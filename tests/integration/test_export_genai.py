"""The fused-decoder route (onnxruntime-genai's builder) against optimum's export, on the tiny Llama."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from slmops.artifacts import read_manifest
from slmops.errors import ExportError
from slmops.export import export
from slmops.quantize import load_recipes, quantize
from slmops.runtime.open import open_folder
from slmops.runtime.params import GenerationParams
from tests.support.tiny import as_fetched

RECIPES = load_recipes(Path(__file__).resolve().parents[2] / "configs" / "recipes.yaml")


@pytest.fixture(scope="module")
def exported(tiny_models, tmp_path_factory: pytest.TempPathFactory):
    folder, facts = tiny_models["tiny-llama"]
    root = tmp_path_factory.mktemp("genai")
    src = root / "fetch"
    shutil.copytree(folder, src)
    variant = as_fetched(src, "tiny-llama", facts)
    for name in ("optimum", "genai"):
        export(variant, src=src, out=root / name, exporter=name)
    return variant, root


def test_fused_graph_matches_optimum(exported) -> None:
    _, root = exported
    ref, fused = open_folder(root / "optimum"), open_folder(root / "genai")
    for name in ("optimum", "genai"):  # both checked against torch at export, past length 0
        assert read_manifest(root / name).info["validation"]["logits"]["max_abs_diff"] < 1e-4
    assert fused.card.graph == "genai-decoder"
    ops = {
        n.op_type
        for n in __import__("onnx").load(str(root / "genai" / "model.onnx"), load_external_data=False).graph.node
    }
    assert "GroupQueryAttention" in ops and "GroupQueryAttention" not in {
        n.op_type for n in __import__("onnx").load(str(root / "optimum" / "model.onnx")).graph.node
    }
    ids = ref.tokenizer.encode("The sun rises in the east and sets in the west.")
    assert np.abs(ref.logits(ids) - fused.logits(ids)).max() < 1e-4
    options = dict(max_tokens=10, temperature=0.0, ignore_eos=True)
    assert ref.generate("The sun", **options) == fused.generate("The sun", **options)
    assert "".join(fused.stream("The sun", **options)) == fused.generate("The sun", **options)


def test_prefill_runs_the_lm_head_on_the_last_position_only(exported) -> None:
    """The fused graph takes ``logits_to_keep``: prefill asks for one position (in chunks, too), the gate and the
    export check for all; the kept row equals the full pass's last row, and both quantized and fp32 keep it."""
    import onnx

    from slmops.runtime import decoder

    variant, root = exported
    graph = onnx.load(str(root / "genai" / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input][-1] == decoder.LOGITS_TO_KEEP
    for recipe in ("fp32", "wo-int8"):
        out = root / "keep" / recipe
        quantize(variant, RECIPES[recipe], src=root / "genai", out=out)
        model = open_folder(out)
        ids = model.tokenizer.encode("The sun rises in the east and sets in the west, " * 3)
        full = model.logits(ids)  # every position, as the quality gate reads them
        assert full.shape[0] == len(ids)
        for chunk in (len(ids), 7):  # one call, and chunks whose last one is short
            old = decoder.PREFILL_CHUNK
            decoder.PREFILL_CHUNK = chunk
            try:
                graph_ = model.graph
                last, cache = graph_.prefill(np.asarray([ids]), graph_.empty_cache(capacity=len(ids) + 1))
            finally:
                decoder.PREFILL_CHUNK = old
            assert last.shape == (1, full.shape[1]) and cache.length == len(ids)
            np.testing.assert_allclose(last[0], full[-1], atol=1e-4, rtol=0)
            kept, _ = graph_.forward(np.asarray([ids]), graph_.empty_cache(capacity=len(ids)), keep=2)
            assert kept.shape == (1, 2, full.shape[1])
            np.testing.assert_allclose(kept[0], full[-2:], atol=1e-4, rtol=0)


def test_recipes_apply_to_the_fused_graph(exported) -> None:
    variant, root = exported
    for recipe in ("fp32", "wo-int8"):
        quantize(variant, RECIPES[recipe], src=root / "genai", out=root / "cand" / recipe)
        read_manifest(root / "cand" / recipe, verify=True)
    fp32, int8 = open_folder(root / "cand" / "fp32"), open_folder(root / "cand" / "wo-int8")
    ids = fp32.tokenizer.encode("Water boils at one hundred degrees.")
    a, b = fp32.logits(ids), int8.logits(ids)
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.8
    assert int8.card.precision == "int8" and (root / "cand" / "fp32" / "model.onnx.data").is_file()


def test_recipe_flags_shape_the_graph(exported) -> None:
    """k-quant codes, an fp32 lm_head on request, and fp16 (for CUDA) with fp32 inputs/outputs."""
    import onnx

    variant, root = exported
    for recipe, device in (("wo-int4", "cpu"), ("wo-int4-kquant", "cpu"), ("wo-int4-body", "cpu"), ("fp16", "cuda")):
        quantize(variant, RECIPES[recipe], src=root / "genai", out=root / "flags" / recipe, device=device)

    def graph(name: str):
        return onnx.load(str(root / "flags" / name / "model.onnx")).graph

    kquant, body, half = graph("wo-int4-kquant"), graph("wo-int4-body"), graph("fp16")
    assert {n.op_type for n in kquant.node} >= {"MatMulNBits"} and "MatMul" not in {n.op_type for n in kquant.node}
    head = [n for n in body.node if n.output[0] == body.output[0].name]
    assert head and head[0].op_type == "MatMul"  # lm_head kept fp32 ...
    assert sum(n.op_type == "MatMulNBits" for n in body.node) == 2 * 5  # ... the body is 4-bit
    assert {i.data_type for i in half.initializer if i.data_type in (1, 10)} == {10}  # every float weight fp16
    assert {
        i.type.tensor_type.elem_type for i in list(half.input) + list(half.output) if i.name in ("logits", "input_ids")
    } == {1, 7}
    fp32 = open_folder(root / "genai")
    ids = fp32.tokenizer.encode("Water boils at one hundred degrees. The sun rises in the east.")
    ref = fp32.logits(ids)
    kq, rtn = (open_folder(root / "flags" / r).logits(ids) for r in ("wo-int4-kquant", "wo-int4"))
    # the tiny random model is hard on 4 bits; k-quant's code search must at least stay finite and near RTN
    assert np.isfinite(kq).all() and np.abs(kq - ref).mean() < 1.5 * np.abs(rtn - ref).mean()


def test_genai_refuses_encoders(tiny_models, tmp_path: Path) -> None:
    folder, facts = tiny_models["tiny-bert"]
    src = tmp_path / "fetch"
    shutil.copytree(folder, src)
    variant = as_fetched(src, "tiny-bert", facts)
    with pytest.raises(ExportError, match="decoders only.*use optimum"):
        export(variant, src=src, out=tmp_path / "out", exporter="genai")
    assert not (tmp_path / "out").exists()


def test_tied_embedding_gathers_the_quantized_head(exported) -> None:
    """embedding: true replaces Gather(Transpose(fp32 head)) by GatherBlockQuantized over the head's own codes."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    variant, root = exported
    for recipe in ("wo-int8", "wo-int4"):
        tied = RECIPES[recipe].model_copy(update={"name": f"{recipe}-emb", "embedding": True})
        quantize(variant, tied, src=root / "genai", out=root / "tied" / recipe)
        graph = onnx.load(str(root / "tied" / recipe / "model.onnx")).graph
        ops = {n.op_type for n in graph.node}
        assert "GatherBlockQuantized" in ops and "Transpose" not in ops
        assert max(int(np.prod(i.dims)) for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT) < 64 * 64
        # ORT itself dequantizes the head (identity input, fp32 compute) and gathers every token: they must agree
        head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.output[0] == "logits")
        gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
        attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
        body = {
            helper.get_attribute_value(a)
            for n in graph.node
            if n.op_type == "MatMulNBits" and n is not head
            for a in n.attribute
            if a.name == "block_size"
        }
        assert body == {RECIPES[recipe].block_size}
        assert attrs["block_size"] == (RECIPES[recipe].lm_head_block_size or RECIPES[recipe].block_size)
        inits = [i for i in graph.initializer if i.name in set(head.input) | set(gather.input)]
        probe = helper.make_graph(
            [
                helper.make_node(
                    "MatMulNBits",
                    ["eye", *head.input[1:]],
                    ["w"],
                    domain="com.microsoft",
                    **{**attrs, "accuracy_level": 0},
                ),
                helper.make_node(
                    "GatherBlockQuantized",
                    [gather.input[0], "ids", *gather.input[2:]],
                    ["e"],
                    domain="com.microsoft",
                    **{a.name: helper.get_attribute_value(a) for a in gather.attribute},
                ),
            ],
            "probe",
            [
                helper.make_tensor_value_info("eye", onnx.TensorProto.FLOAT, None),
                helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, None),
            ],
            [
                helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, None),
                helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, None),
            ],
            inits,
        )
        session = ort.InferenceSession(
            helper.make_model(
                probe, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
            ).SerializeToString()
        )
        k, n = attrs["K"], attrs["N"]
        w, e = session.run(None, {"eye": np.eye(k, dtype=np.float32), "ids": np.arange(n, dtype=np.int64)})
        assert np.abs(w.T - e).max() < 1e-6
        # and it generates: cached greedy decoding on the tied graph picks each step's argmax of a full forward pass
        model = open_folder(root / "tied" / recipe)
        ids = model.prompt_ids("The sun")
        greedy = list(model.token_stream(ids, GenerationParams(max_tokens=5, temperature=0.0, ignore_eos=True)))
        full = list(ids)
        for _ in range(5):
            full.append(int(model.logits(full)[-1].argmax()))
        assert greedy == full[len(ids) :]
        text = model.generate("The sun", max_tokens=5, temperature=0.0, ignore_eos=True)
        assert text == model.tokenizer.decode(greedy)
    # optimum's graph keeps a separate table: the flag is a no-op there, not an error
    tied = RECIPES["wo-int8"].model_copy(update={"name": "wo-int8-emb", "embedding": True})
    quantize(variant, tied, src=root / "optimum", out=root / "tied" / "optimum")
    assert "Gather" in {n.op_type for n in onnx.load(str(root / "tied" / "optimum" / "model.onnx")).graph.node}
