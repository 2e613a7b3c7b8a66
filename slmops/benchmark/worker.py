"""Benchmark worker: runs in a fresh subprocess, measures one candidate, prints one JSON line.

It imports only the slmops runtime (never torch), so its RSS is the runtime's own.
Usage: ``python -m slmops.benchmark.worker`` with the spec as JSON on stdin.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    """Peak RSS of this process image: VmHWM (reset at exec, unlike ru_maxrss, which a child
    inherits from the parent that forked it), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95))}


def bench_decoder(model, spec: dict) -> dict:  # noqa: ANN001
    from slmops.evaluate.metrics import eval_text
    from slmops.runtime.params import GenerationParams

    ids = model.tokenizer.encode(eval_text(), add_special_tokens=False)
    while len(ids) < spec["prompt_tokens"]:
        ids = ids + ids
    prompt = ids[: spec["prompt_tokens"]]
    params = GenerationParams(max_tokens=spec["new_tokens"], temperature=0.0, ignore_eos=True)
    ttft, rates, step_ms = [], [], []
    for run in range(spec["warmup"] + spec["repeats"]):
        start = time.perf_counter()
        stamps = []
        for _ in model.token_stream(prompt, params):
            stamps.append(time.perf_counter())
        if run < spec["warmup"]:
            continue
        ttft.append((stamps[0] - start) * 1000)
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        step_ms.extend(np.diff(stamps) * 1000)
    return {
        "ttft_ms": float(np.median(ttft)),
        "decode_tok_s": float(np.median(rates)),
        "token_latency_ms": _percentiles(step_ms),
        "prompt_tokens": len(prompt),
        "new_tokens": spec["new_tokens"],
    }


def bench_encoder(model, spec: dict) -> dict:  # noqa: ANN001
    from slmops.evaluate.metrics import eval_sentences

    data = eval_sentences()
    pool = data["queries"] + data["documents"]
    texts = (pool * (spec["items"] // len(pool) + 1))[: spec["items"]]
    run = model.embed if hasattr(model, "embed") else (lambda batch, **kw: model.scores(batch[0], batch[1:] or batch, **kw))
    rates, single = [], []
    for i in range(spec["warmup"] + spec["repeats"]):
        start = time.perf_counter()
        run(texts, batch_size=spec["batch_size"])
        elapsed = time.perf_counter() - start
        if i >= spec["warmup"]:
            rates.append(len(texts) / elapsed)
    for text in pool:
        start = time.perf_counter()
        run([text, text], batch_size=1)
        single.append((time.perf_counter() - start) * 1000 / 2)
    return {"items_per_s": float(np.median(rates)), "batch_size": spec["batch_size"], "latency_ms_batch1": _percentiles(single)}


def main() -> int:
    spec = json.loads(sys.stdin.read())
    rss_start = _rss_mb()
    from slmops.runtime.open import open_folder

    start = time.perf_counter()
    model = open_folder(Path(spec["folder"]), device=spec["device"], threads=spec["threads"], verify=False)
    load_s = time.perf_counter() - start
    rss_loaded = _rss_mb()
    task = model.card.task
    result = bench_decoder(model, spec) if task == "causal-lm" else bench_encoder(model, spec)
    result.update(
        {
            "task": task,
            "load_s": load_s,
            "rss_start_mb": rss_start,
            "rss_after_load_mb": rss_loaded,
            "peak_rss_mb": _peak_rss_mb(),
            "providers": model.session.get_providers() if hasattr(model, "session") else model.graph.session.get_providers(),
            "pid": __import__("os").getpid(),
            "torch_imported": "torch" in sys.modules,
        }
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
