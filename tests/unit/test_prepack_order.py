"""The cached optimized graph lists the nodes reading the largest weights first, so onnxruntime packs (and frees)
them before the rest: the open's peak is not the big weight's source on top of every packed copy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slmops.runtime.session import FIRST_PREPACK_BYTES, _largest_weights_first

K, SMALL, BIG_N = 1024, 32, 16384  # 32 MatMulNBits of 1024x1024 (0.5 MB at 4 bits each), then one of 1024x16384 (8 MB)


def _matmul_nbits(name: str, src: str, out: str, n: int, rng: np.random.Generator):
    from onnx import helper, numpy_helper

    block = 32
    weight = numpy_helper.from_array(rng.integers(0, 256, (n, K // block, block // 2), dtype=np.uint8), f"{name}.w")
    scales = numpy_helper.from_array((rng.random(n * K // block, dtype=np.float32) * 0.01), f"{name}.s")
    node = helper.make_node(
        "MatMulNBits",
        [src, weight.name, scales.name],
        [out],
        name=name,
        domain="com.microsoft",
        K=K,
        N=n,
        bits=4,
        block_size=block,
        accuracy_level=4,
    )
    return node, [weight, scales]


def _graph(folder: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    nodes, inits, src = [], [], "x"
    for i in range(SMALL):
        node, weights = _matmul_nbits(f"small{i}", src, f"h{i}", K, rng)
        nodes.append(node)
        inits += weights
        src = f"h{i}"
    node, weights = _matmul_nbits("big", src, "y", BIG_N, rng)
    nodes.append(node)
    inits += weights
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, BIG_N])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    folder.mkdir(parents=True)
    onnx.save_model(
        model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data", size_threshold=1024
    )
    return folder / "model.onnx"


# The child: open the graph as the cache is opened (ORT_DISABLE_ALL, weights mapped), run it, report what the open
# added at its peak and at its end (kB), and the output.
_OPEN = """
import sys, numpy as np, onnxruntime as ort
def kb(key): return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1])
before = kb('VmRSS')
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
session = ort.InferenceSession(sys.argv[1], sess_options=opts, providers=['CPUExecutionProvider'])
peak, end = kb('VmHWM') - before, kb('VmRSS') - before
y = session.run(None, {'x': np.linspace(-1, 1, int(sys.argv[3]), dtype=np.float32)[None]})[0]
np.save(sys.argv[2], y)
print(peak, end)
"""


def test_the_largest_weights_come_first_and_nothing_else_changes(tmp_path: Path) -> None:
    import onnx

    graph = _graph(tmp_path / "g")
    before = onnx.load(str(graph), load_external_data=False)
    _largest_weights_first(graph)
    after = onnx.load(str(graph), load_external_data=False)
    assert [n.name for n in after.graph.node] == ["big"] + [f"small{i}" for i in range(SMALL)]
    assert 0.5 * 2**20 < FIRST_PREPACK_BYTES < 8 * 2**20  # the test's weights fall on both sides of it
    del before.graph.node[:], after.graph.node[:]
    assert after == before  # initializers (external data references), inputs, outputs, opsets: as they were
    # already in that order: the file is left alone
    stamp = graph.stat().st_mtime_ns, graph.read_bytes()
    _largest_weights_first(graph)
    assert (graph.stat().st_mtime_ns, graph.read_bytes()) == stamp


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmRSS/VmHWM from Linux /proc")
def test_the_open_peaks_lower_with_the_same_output(tmp_path: Path) -> None:
    graph = _graph(tmp_path / "g")
    reordered = _graph(tmp_path / "r")
    _largest_weights_first(reordered)

    def open_in_child(path: Path, out: Path) -> tuple[int, int]:
        done = subprocess.run(
            [sys.executable, "-c", _OPEN, str(path), str(out), str(K)], check=True, capture_output=True, text=True
        )
        peak, end = map(int, done.stdout.split())
        return peak, end

    peak, end = open_in_child(graph, tmp_path / "g.npy")
    peak_first, end_first = open_in_child(reordered, tmp_path / "r.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), np.load(tmp_path / "g.npy"))
    big_kb = K * BIG_N // 2 // 1024  # the big weight's 4-bit source, 8 MB
    # in file order its source is resident on top of every packed copy, at the very end of the open
    assert peak - end > big_kb * 3 // 4, (peak, end)
    # first, it is packed and freed before the rest exists: the open peaks where it ends
    assert peak_first - end_first < big_kb // 4, (peak_first, end_first)
    assert peak_first < peak - big_kb // 2, (peak_first, peak)
    # and ends about where it did (the allocator places the packed copies differently: 2 MB apart seen)
    assert abs(end_first - end) < big_kb // 2, (end_first, end)
