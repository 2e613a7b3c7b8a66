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
