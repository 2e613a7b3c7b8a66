"""What one decode step's MatMulNBits calls cost per weight format: onnxruntime's kernel throughput, not the model's.

    python benchmarks/kernels.py                      # the served candidate's shapes (after `make run`)
    python benchmarks/kernels.py --rounds 6 --formats 4/32,4/64,8/64,8/128

A decode step multiplies one row of activations by every weight matrix once. For each MatMul shape (K, N) of
``--folder``'s graph and each format ``bits/block`` in ``--formats`` this builds a graph of independent
MatMulNBits nodes (random codes: the kernel does the same work whatever their values; accuracy level 4, int8
activations, as the recipes use), as many as make ``--mb`` MB of weights so that, as in a real step, the
weights stream from memory rather than from a core's own cache, and times one row through all of them. Each round
runs in a fresh process (a process keeps its own speed for its whole life on this VM), the formats in turn
within it, the order rotating by round. Prints microseconds per call and the ratio to ``--reference``'s format in
the same round (medians of the rounds, their range in brackets), then what the graph's own MatMulNBits calls add
up to per token in each format, against the graph as it is.

``--step`` measures the whole decode step instead: the candidate as it is, and a copy whose every MatMulNBits is
replaced by a Slice (after a Concat of copies where N > K) of its input to the same output shape, so that
attention, the norms, the executor and the Python around each step still run as they do, on other numbers. Both
open in one fresh process and take turns (128-token prompt, 64 greedy steps each); the difference is what the
MatMulNBits calls cost inside the step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import quiet

from slmops.benchmark.machine import cpu_description

ROOT = Path(__file__).resolve().parents[1]
# before each round: others' CPU and steal in a 1 s sample (the load average counts the previous round's own work)
LIMITS = quiet.Limits(max_load=float("inf"), max_busy_pct=10.0, max_steal_pct=5.0)
FOLDER = ROOT / "artifacts" / "candidates" / "smollm2-135m-instruct" / "wo-int8-gptq4"


def _graph_file(folder: Path) -> Path:
    if not (folder / "model.onnx").is_file():
        raise SystemExit(f"{folder} holds no model.onnx: pass --folder a candidate folder (`make run` builds them)")
    return folder / "model.onnx"


def graph_shapes(folder: Path) -> Counter:
    """(K, N, bits, block) -> how many MatMulNBits nodes of the folder's model.onnx have it."""
    import onnx

    model = onnx.load(str(_graph_file(folder)), load_external_data=False)
    shapes: Counter = Counter()
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
            shapes[(a["K"], a["N"], a["bits"], a["block_size"])] += 1
    if not shapes:
        raise SystemExit(f"{folder / 'model.onnx'} has no MatMulNBits node: pass --folder a matmul_nbits candidate")
    return shapes


def _session(k: int, n: int, bits: int, block: int, mb: float, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    blocks = -(-k // block)
    per_node = n * blocks * (block * bits // 8 + 4)
    count = max(1, round(mb * 2**20 / per_node))
    nodes, inits = [], []
    for i in range(count):
        inits += [
            numpy_helper.from_array(rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8), f"b{i}"),
            numpy_helper.from_array(rng.uniform(1e-3, 1e-2, n * blocks).astype(np.float32), f"s{i}"),
            numpy_helper.from_array(rng.integers(0, 256, n * -(-blocks * bits // 8), dtype=np.uint8), f"z{i}"),
        ]
        nodes.append(
            helper.make_node(
                "MatMulNBits", ["x", f"b{i}", f"s{i}", f"z{i}"], [f"y{i}"], domain="com.microsoft",
                K=k, N=n, bits=bits, block_size=block, accuracy_level=4,
            )
        )  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "kernels",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, n]) for i in range(count)],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]), count


def _in_fresh_process(flag: str, spec: dict, what: str) -> dict:
    """Run this script with ``flag`` and ``spec`` in a new process; the JSON it prints last."""
    done = subprocess.run(
        [sys.executable, __file__, flag, json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def child(spec: dict) -> dict:
    """One round: every (shape, format) in turn, in this process; microseconds per call of each."""
    x = {}
    sessions = {}
    for k, n in spec["shapes"]:
        x[k] = {"x": np.random.default_rng(1).standard_normal((1, k)).astype(np.float32)}
        for bits, block in spec["formats"]:
            sessions[(k, n, bits, block)] = _session(k, n, bits, block, spec["mb"], spec["threads"])
    keys = list(sessions)
    shift = spec["round"] % len(keys)
    out = {}
    for key in keys[shift:] + keys[:shift]:
        session, count = sessions[key]
        for _ in range(3):
            session.run(None, x[key[0]])
        start, runs = time.perf_counter(), 0
        while runs < 5 or time.perf_counter() - start < spec["seconds"]:
            session.run(None, x[key[0]])
            runs += 1
        out[",".join(map(str, key))] = (time.perf_counter() - start) / runs / count * 1e6
    return out


def stub_matmuls(src: Path, dst: Path) -> None:
    """Copy the candidate folder ``src`` to ``dst`` with each MatMulNBits replaced by a Slice of its input (after a
    Concat of copies where it widens it) to the same output shape, and the weights only they read left out."""
    import shutil

    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(_graph_file(src)))
    if not any(node.op_type == "MatMulNBits" for node in model.graph.node):
        raise SystemExit(f"{src / 'model.onnx'} has no MatMulNBits node: pass --folder a matmul_nbits candidate")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.onnx*"))
    nodes, consts = [], []

    def const(name: str, values: list[int]) -> str:
        consts.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            nodes.append(node)
            continue
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        x, base = node.input[0], node.name or node.output[0]
        if a["N"] > a["K"]:
            copies = [x] * -(-a["N"] // a["K"])
            nodes.append(helper.make_node("Concat", copies, [f"{base}/wide"], name=f"{base}/Concat", axis=-1))
            x = f"{base}/wide"
        bounds = [const(f"{base}/{what}", [v]) for what, v in (("start", 0), ("end", a["N"]), ("axis", -1))]
        nodes.append(helper.make_node("Slice", [x, *bounds], list(node.output), name=f"{base}/Slice"))
    read = {name for node in nodes for name in node.input}
    kept = [i for i in model.graph.initializer if i.name in read] + consts
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(kept)
    onnx.save(model, str(dst / "model.onnx"))


def step_child(spec: dict) -> dict:
    """Decode step milliseconds of each folder in ``spec``, taking turns in this process."""
    from slmops.runtime.open import open_folder
    from slmops.runtime.pages import wait_for_huge_pages

    models = {f: open_folder(Path(f), threads=spec["threads"], verify=False) for f in spec["folders"]}
    wait_for_huge_pages()
    ms: dict[str, list[float]] = {f: [] for f in models}
    for _ in range(spec["turns"]):
        for folder, model in models.items():
            graph = model.graph
            cache = graph.empty_cache(capacity=128 + 64)
            logits, cache = graph.forward(np.arange(1000, 1128)[None], cache, keep=1)
            start = time.perf_counter()
            for _ in range(64):
                # the stub's logits are not a model's: the token is only kept inside the vocabulary
                token = int(logits[0, -1].argmax()) % logits.shape[-1]
                logits, cache = graph.forward(np.array([[token]]), cache, keep=1, borrow=True)
            ms[folder].append((time.perf_counter() - start) / 64 * 1000)
    return ms


def step(folder: Path, *, turns: int, threads: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "stub"
        stub_matmuls(folder, stub)
        before = quiet.wait_for_quiet(LIMITS, max_wait_s=30.0)
        spec = {"folders": [str(folder), str(stub)], "turns": turns, "threads": threads}
        ms = _in_fresh_process("--step-child", spec, "the step run")
    full, rest = ms[str(folder)], ms[str(stub)]
    share = [(a - b) / a for a, b in zip(full, rest, strict=True)]
    print(f"decode step of {folder.name} after 128 tokens, {threads} threads, {turns} turns of 64 steps each "
          f"(others' CPU before: {before.busy_pct:.0f}%, steal {before.steal_pct:.1f}%), medians (range):")  # fmt: skip
    print(f"  as it is                      {np.median(full):6.2f} ms ({min(full):.2f}-{max(full):.2f})")
    print(f"  MatMulNBits replaced by Slice {np.median(rest):6.2f} ms ({min(rest):.2f}-{max(rest):.2f})")
    print(f"  MatMulNBits' share of the step {np.median(share):5.1%} ({min(share):.1%}-{max(share):.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=FOLDER, help="a matmul_nbits candidate: its shapes and formats")
    parser.add_argument("--formats", default="4/32,4/64,8/64,8/128", help="bits/block, comma-separated")
    parser.add_argument("--reference", default="8/128", help="the format the ratios are to")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mb", type=float, default=64.0, help="MB of weights per (shape, format) graph")
    parser.add_argument("--seconds", type=float, default=0.5, help="timed seconds per (shape, format) per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step", action="store_true", help="the whole decode step with and without MatMulNBits")
    parser.add_argument("--turns", type=int, default=8, help="--step: turns of 64 steps per graph")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--step-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.step_child:
        print(json.dumps(step_child(json.loads(args.step_child))))
        return
    if args.step:
        step(args.folder, turns=args.turns, threads=args.threads)
        return
    try:
        formats = [tuple(int(v) for v in f.split("/")) for f in args.formats.split(",")]
        reference = tuple(int(v) for v in args.reference.split("/"))
    except ValueError:
        raise SystemExit(
            f"--formats {args.formats!r} / --reference {args.reference!r}: write bits/block, e.g. 4/32"
        ) from None
    for bits, block in {*formats, reference}:
        if bits not in (4, 8) or block < 16 or block & (block - 1):
            raise SystemExit(f"format {bits}/{block}: bits must be 4 or 8, block a power of two >= 16")
    counts = graph_shapes(args.folder)
    # the reference and the graph's own formats are always measured: the per-token sum "as it is" needs them
    for f in [reference, *sorted({(b, bl) for _, _, b, bl in counts})]:
        if f not in formats:
            formats.append(f)
    shapes = sorted({(k, n) for k, n, _, _ in counts})
    rounds: list[dict] = []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
        spec = {"shapes": shapes, "formats": formats, "mb": args.mb, "seconds": args.seconds,
                "threads": args.threads, "round": r}  # fmt: skip
        before = quiet.wait_for_quiet(LIMITS, max_wait_s=30.0)
        us_per_call = _in_fresh_process("--child", spec, f"round {r + 1}")
        rounds.append({"us": us_per_call, "busy": LIMITS.why_busy(before)})
    kept = [r["us"] for r in rounds if not r["busy"]] or [r["us"] for r in rounds]

    def us(k: int, n: int, bits: int, block: int) -> list[float]:
        return [r[f"{k},{n},{bits},{block}"] for r in kept]

    print(f"\nMatMulNBits, one row (decode), {args.threads} threads, accuracy level 4; {len(kept)} of {len(rounds)} "
          f"rounds (busy: {[r['busy'] for r in rounds if r['busy']]}); medians (range)")  # fmt: skip
    print(f"{'K x N':>12} {'calls/token':>11}  " + "  ".join(f"{f'{f[0]}-bit/{f[1]}':>26}" for f in formats))
    for k, n in shapes:
        calls = sum(c for (kk, nn, _, _), c in counts.items() if (kk, nn) == (k, n))
        ref = us(k, n, *reference)
        cells = []
        for f in formats:
            t = us(k, n, *f)
            ratio = [a / b for a, b in zip(t, ref, strict=True)]
            cells.append(f"{np.median(t):7.1f} us {np.median(ratio):4.2f}x ({min(ratio):4.2f}-{max(ratio):4.2f})")
        print(f"{f'{k} x {n}':>12} {calls:>11}  " + "  ".join(f"{c:>26}" for c in cells))
    as_is = sum(np.median(us(k, n, b, bl)) * c for (k, n, b, bl), c in counts.items())
    print(f"\nper token, this graph's {sum(counts.values())} MatMulNBits calls: as it is {as_is / 1000:.2f} ms", end="")
    for f in formats:
        total = sum(np.median(us(k, n, *f)) * c for (k, n, _, _), c in counts.items())
        print(f"; all {f[0]}-bit/{f[1]} {total / 1000:.2f} ms", end="")
    cpu, flags = cpu_description()
    print(f"\nmachine: {os.cpu_count()} x {cpu} ({' '.join(flags)})")


if __name__ == "__main__":
    main()
