"""slmops.quantize.packed: MatMulNBits reading the same activation become one, with the same outputs bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

from slmops.quantize.packed import pack_shared_input

K, HIDDEN = 64, 96


def _mlp(rng: np.random.Generator, *, odd_block: bool = False) -> onnx.ModelProto:
    """x -> (gate, up) -> silu(gate) * up -> down, plus q/k/v reading another activation (three to pack) and,
    with ``odd_block``, a fourth projection of that activation quantized at another block size (left alone)."""
    w = {
        n: rng.standard_normal(shape).astype(np.float32) * 0.1
        for n, shape in (
            ("gate", (K, HIDDEN)),
            ("up", (K, HIDDEN)),
            ("down", (HIDDEN, K)),
            ("q", (K, K)),
            ("k", (K, 32)),
            ("v", (K, 32)),
            ("odd", (K, 16)),
        )
    }
    nodes = [
        helper.make_node("MatMul", ["x", "gate"], ["g"], name="/mlp/gate_proj/MatMul"),
        helper.make_node("Sigmoid", ["g"], ["gs"]),
        helper.make_node("Mul", ["g", "gs"], ["act"]),
        helper.make_node("MatMul", ["x", "up"], ["u"], name="/mlp/up_proj/MatMul"),
        helper.make_node("Mul", ["act", "u"], ["h"]),
        helper.make_node("MatMul", ["h", "down"], ["y"], name="/mlp/down_proj/MatMul"),
        helper.make_node("Relu", ["x"], ["x2"]),
        *(helper.make_node("MatMul", ["x2", n], [f"{n}_out"], name=f"/attn/{n}_proj/MatMul") for n in "qkv"),
    ]
    outputs = ["y", "q_out", "k_out", "v_out"]
    if odd_block:
        nodes.append(helper.make_node("MatMul", ["x2", "odd"], ["odd_out"], name="/attn/odd_proj/MatMul"))
        outputs.append("odd_out")
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", "seq", f"{o}_width"]) for o in outputs],
        [numpy_helper.from_array(a, n) for n, a in w.items() if odd_block or n != "odd"],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _quantize(model: onnx.ModelProto, *, bits: int, symmetric: bool, block: int, exclude=()) -> onnx.ModelProto:
    config = DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=symmetric, accuracy_level=4, bits=bits, op_types_to_quantize=("MatMul",)
    )
    quantizer = MatMulNBitsQuantizer(
        model,
        block_size=block,
        is_symmetric=symmetric,
        accuracy_level=4,
        nodes_to_exclude=list(exclude),
        algo_config=config,
    )
    quantizer.process()
    return quantizer.model.model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize(("bits", "symmetric"), [(8, True), (4, False)])
def test_packed_projections_give_the_same_outputs_bit_for_bit(bits: int, symmetric: bool) -> None:
    rng = np.random.default_rng(0)
    model = _quantize(_mlp(rng), bits=bits, symmetric=symmetric, block=32)
    before = onnx.ModelProto()
    before.CopyFrom(model)

    assert pack_shared_input(model) == 3  # gate+up -> 1, q+k+v -> 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 3 and ops.count("Split") == 2  # packed MLP, packed q/k/v, down
    packed = [n for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.endswith("_packed")]
    assert sorted(helper.get_attribute_value(a) for n in packed for a in n.attribute if a.name == "N") == [128, 192]
    names = {i.name for i in model.graph.initializer}
    assert not any(name.startswith(("gate", "up", "q_", "k_", "v_")) for name in names)  # the members' weights left

    for seq in (1, 7):  # a decode step and a prompt
        x = rng.standard_normal((2, seq, K)).astype(np.float32)
        for a, b in zip(_run(before, x), _run(model, x), strict=True):
            assert a.shape == b.shape and np.array_equal(a, b)


def test_projections_that_differ_are_left_alone() -> None:
    rng = np.random.default_rng(1)
    model = _mlp(rng, odd_block=True)
    # the odd projection at block 16, the rest at 32: q/k/v still pack, the odd one stays on its own
    odd = _quantize(
        model, bits=4, symmetric=False, block=16, exclude=[n.name for n in model.graph.node if "odd" not in n.name]
    )
    model = _quantize(odd, bits=4, symmetric=False, block=32)
    assert pack_shared_input(model) == 3
    lone = [n for n in model.graph.node if n.op_type == "MatMulNBits" and "odd" in n.name]
    assert len(lone) == 1 and not lone[0].name.endswith("_packed")
    assert pack_shared_input(model) == 0  # nothing left to pack: a second pass changes nothing

    plain = _mlp(rng)  # fp32 MatMul is not MatMulNBits: untouched
    assert pack_shared_input(plain) == 0 and [n.op_type for n in plain.graph.node].count("MatMul") == 6
