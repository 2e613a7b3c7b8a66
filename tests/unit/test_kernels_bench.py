"""benchmarks/kernels.py: MatMulNBits per-call timing on a real onnxruntime, the graph's shapes, bad formats."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def kernels():
    sys.path.insert(0, str(BENCHMARKS))  # a script: it imports quiet.py beside it
    try:
        import kernels

        yield kernels
    finally:
        sys.path.remove(str(BENCHMARKS))


def _matmul_nbits_folder(folder: Path, shapes: list[tuple[int, int, int, int]]) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    for i, (k, n, bits, block) in enumerate(shapes):
        blocks = k // block
        inits += [
            numpy_helper.from_array(np.zeros((n, blocks, block * bits // 8), np.uint8), f"b{i}"),
            numpy_helper.from_array(np.ones(n * blocks, np.float32), f"s{i}"),
        ]
        nodes.append(
            helper.make_node("MatMulNBits", ["x", f"b{i}", f"s{i}"], [f"y{i}"], domain="com.microsoft",
                             K=k, N=n, bits=bits, block_size=block)
        )  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, shapes[0][0] if shapes else 8])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(len(shapes))],
        inits,
    )
    folder.mkdir()
    onnx.save(helper.make_model(graph), str(folder / "model.onnx"))
    return folder


def test_the_graph_shapes_are_counted_by_shape_and_format(kernels, tmp_path: Path) -> None:
    folder = _matmul_nbits_folder(tmp_path / "m", [(64, 32, 4, 32), (64, 32, 4, 32), (64, 32, 8, 64), (32, 64, 4, 32)])
    assert kernels.graph_shapes(folder) == {(64, 32, 4, 32): 2, (64, 32, 8, 64): 1, (32, 64, 4, 32): 1}
    with pytest.raises(SystemExit, match="no MatMulNBits"):
        kernels.graph_shapes(_matmul_nbits_folder(tmp_path / "empty", []))


def test_a_round_times_every_shape_in_every_format_on_onnxruntime(kernels) -> None:
    spec = {"shapes": [(64, 32), (128, 16)], "formats": [(4, 32), (8, 64)], "mb": 0.01, "seconds": 0.0,
            "threads": 1, "round": 1}  # fmt: skip
    out = kernels.child(spec)
    assert set(out) == {"64,32,4,32", "64,32,8,64", "128,16,4,32", "128,16,8,64"}
    assert all(us > 0 for us in out.values())


@pytest.mark.parametrize("formats", ["3/32", "4/48", "four/32"])
def test_a_bad_format_is_named(formats: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "kernels.py"), "--formats", formats], capture_output=True, text=True
    )
    assert done.returncode != 0 and formats.split("/")[0] in done.stderr and "bits" in done.stderr, done.stderr


def test_the_stub_keeps_every_output_shape_without_a_matmul_nbits(kernels, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    folder = _matmul_nbits_folder(tmp_path / "m", [(64, 32, 4, 32), (64, 200, 8, 64)])
    (folder / "tokenizer.json").write_text("{}")
    kernels.stub_matmuls(folder, tmp_path / "stub")
    assert (tmp_path / "stub" / "tokenizer.json").read_text() == "{}"
    stub = onnx.load(str(tmp_path / "stub" / "model.onnx"))
    assert not [n for n in stub.graph.node if n.op_type == "MatMulNBits"]
    assert not [i for i in stub.graph.initializer if i.name in ("b0", "s0", "b1", "s1")]
    x = {"x": np.ones((1, 64), np.float32)}
    shapes = [y.shape for y in ort.InferenceSession(str(folder / "model.onnx")).run(None, x)]
    assert shapes == [(1, 32), (1, 200)]
    assert [y.shape for y in ort.InferenceSession(str(tmp_path / "stub" / "model.onnx")).run(None, x)] == shapes


def test_a_folder_without_a_graph_is_named(kernels, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"holds no model\.onnx.*make run"):
        kernels.graph_shapes(tmp_path)
