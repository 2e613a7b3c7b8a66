"""GPTQ codes (slmops/quantize/gptq.py): lower output error than round-to-nearest, MatMulNBits' layout."""

from __future__ import annotations

import numpy as np
import pytest

from slmops.errors import QuantizeError
from slmops.quantize.gptq import gptq


def _problem(k: int = 128, n: int = 48, tokens: int = 2048, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A weight [K, N] and the Hessian X^T X of correlated inputs with a few loud channels, as in a transformer."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(tokens, k // 4)) @ rng.normal(size=(k // 4, k)) + 0.3 * rng.normal(size=(tokens, k))
    x[:, rng.choice(k, 4, replace=False)] *= 8.0
    return rng.normal(scale=0.05, size=(k, n)).astype(np.float32), x.T @ x


def _output_error(weight: np.ndarray, approx: np.ndarray, h: np.ndarray) -> float:
    d = (weight - approx).astype(np.float64)
    return float(np.trace(d.T @ h @ d) / np.trace(weight.T.astype(np.float64) @ h @ weight))


def test_gptq_cuts_the_output_error_of_round_to_nearest() -> None:
    weight, h = _problem()
    rtn = gptq(weight, np.eye(weight.shape[0]), act_order=False)  # an identity Hessian spreads no error: RTN
    for act_order in (False, True):
        codes = gptq(weight, h, act_order=act_order)
        assert _output_error(weight, codes.dequantized(), h) < 0.5 * _output_error(weight, rtn.dequantized(), h)


def test_codes_are_round_to_nearest_min_max_under_an_identity_hessian() -> None:
    weight, _ = _problem(k=64, n=8)
    codes = gptq(weight, np.eye(64), act_order=False)
    assert codes.codes.dtype == np.uint8 and codes.codes.max() <= 15 and codes.zeros.max() <= 15
    blocks = weight.T.reshape(8, 2, 32)
    low, high = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
    np.testing.assert_allclose(codes.scales, (high - low) / 15, rtol=1e-6)
    step = codes.scales.repeat(32, axis=1).T  # [K, N]
    assert np.abs(codes.dequantized() - weight).max() <= 0.5 * step.max() * (1 + 1e-5)


def test_packed_codes_run_as_matmulnbits_in_onnxruntime() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight, h = _problem(k=96, n=40)
    codes = gptq(weight, h)
    packed, zp = codes.packed()
    node = helper.make_node(
        "MatMulNBits", ["x", "b", "s", "z"], ["y"], domain="com.microsoft", K=96, N=40, bits=4, block_size=32
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 40])],
        [
            numpy_helper.from_array(packed, "b"),
            numpy_helper.from_array(codes.scales.reshape(-1), "s"),
            numpy_helper.from_array(zp.reshape(-1), "z"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(5, 96)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ codes.dequantized(), rtol=1e-4, atol=1e-4)


def test_an_input_size_off_the_block_grid_is_refused() -> None:
    with pytest.raises(QuantizeError, match="multiple of block_size 32; got K=48"):
        gptq(np.zeros((48, 4), np.float32), np.eye(48))


def test_inputs_never_active_get_zero_weights_and_no_error() -> None:
    weight, h = _problem(k=64, n=8)
    h[5, :] = h[:, 5] = 0.0
    codes = gptq(weight, h)
    assert np.isfinite(codes.scales).all()
    assert abs(codes.dequantized()[5]).max() <= codes.scales.max()  # the dead input's weight went to ~0


def _norm_graph(k: int, gamma: np.ndarray, weights: list[np.ndarray], *, also_add: bool = False):
    """x -> SimplifiedLayerNormalization(gamma) -> one MatMul per weight (and, with ``also_add``, an Add of the
    normed tensor to itself: a reader that is not a MatMul)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("SimplifiedLayerNormalization", ["x", "gamma"], ["normed"], name="norm", axis=-1)]
    outputs, inits = [], [numpy_helper.from_array(gamma, "gamma")]
    for i, w in enumerate(weights):
        nodes.append(helper.make_node("MatMul", ["normed", f"w{i}"], [f"y{i}"], name=f"proj{i}/MatMul"))
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    if also_add:
        nodes.append(helper.make_node("Add", ["normed", "normed"], ["twice"], name="add"))
        outputs.append(helper.make_tensor_value_info("twice", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _normed(x: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * gamma


def _fold_setup(also_add: bool = False):
    from slmops.quantize.recipes import LowBits

    rng = np.random.default_rng(3)
    k = 128
    gamma = rng.uniform(0.5, 1.5, k).astype(np.float32)
    x = rng.normal(size=(2048, k)).astype(np.float32)
    x[:, rng.choice(k, 6, replace=False)] *= 20.0  # a few loud channels, as after a transformer's norms
    weights = [rng.normal(scale=0.05, size=(k, n)).astype(np.float32) for n in (48, 40)]
    model = _norm_graph(k, gamma, weights, also_add=also_add)
    normed = _normed(x, gamma)
    h = {("normed", 1.0): normed.T @ normed}
    low = next(n for n in model.graph.node if n.name == "proj0/MatMul")
    targets = {low.name: (low, LowBits(nodes="proj0", block_size=64))}
    return model, x, weights, h, targets


def test_activation_scales_fold_exactly_and_cut_the_gptq_output_error() -> None:
    import copy

    from onnx import numpy_helper

    from slmops.quantize.gptq import fold_activation_scales

    model, x, weights, h, targets = _fold_setup()
    before = _run(model, x[:64])
    h_before = h[("normed", 1.0)].copy()
    scaled = copy.deepcopy(model)
    (node, entry) = targets["proj0/MatMul"]
    codes = fold_activation_scales(scaled, {node.name: (node, entry)}, h, alphas=[0.0, 0.25, 0.5])
    after = _run(scaled, x[:64])
    for a, b in zip(before, after, strict=True):  # the graph computes the same function
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    inits = {i.name: numpy_helper.to_array(i) for i in scaled.graph.initializer}
    s = inits["w0"][:, 0] / weights[0][:, 0]
    assert not np.allclose(s, 1.0)  # an alpha above 0 won on the loud channels
    np.testing.assert_allclose(inits["w1"], weights[1] * s[:, None], rtol=1e-5)  # the 8-bit reader scaled too
    np.testing.assert_allclose(h[("normed", 1.0)], h_before / np.outer(s, s), rtol=1e-6)
    # the codes returned are those of the scaled weight; in the original space they beat GPTQ without scales
    approx = codes["proj0/MatMul"].dequantized() / s[:, None]
    plain = gptq(weights[0], h_before, block=64).dequantized()
    assert _output_error(weights[0], approx, h_before) < 0.9 * _output_error(weights[0], plain, h_before)


def test_a_norm_read_by_other_nodes_than_matmuls_is_not_scaled() -> None:
    from onnx import numpy_helper

    from slmops.quantize.gptq import fold_activation_scales

    model, _, weights, h, targets = _fold_setup(also_add=True)
    h_before = h[("normed", 1.0)].copy()
    assert fold_activation_scales(model, targets, h, alphas=[0.0, 0.5]) == {}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_array_equal(inits["w0"], weights[0])
    np.testing.assert_array_equal(h[("normed", 1.0)], h_before)
