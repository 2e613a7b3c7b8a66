"""Benchmark worker: runs in a fresh subprocess, measures one candidate on one profile, prints one JSON line.

It imports only the slmops runtime (never torch), so its memory is the runtime's own.
Usage: ``python -m slmops.benchmark.worker`` with the spec as JSON on stdin.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np


class RssSampler:
    """Samples this process's RSS every few ms in a thread (as optimum-benchmark does) and keeps the peak."""

    def __init__(self, interval_ms: float) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval_ms / 1000
        self._stop = threading.Event()
        self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self.current())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def peak_rss_mb() -> float:
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


def bench_decoder(model, spec: dict) -> dict:
    from slmops.evaluate.metrics import eval_text
    from slmops.runtime.params import GenerationParams

    text_ids = model.tokenizer.encode(eval_text(), add_special_tokens=False)
    params = GenerationParams(max_tokens=spec["new_tokens"], temperature=0.0, ignore_eos=True)
    by_length, skipped = {}, {}
    for length in spec["prompt_tokens"]:
        if length + spec["new_tokens"] > model.card.context_length:
            skipped[str(length)] = f"{length} + {spec['new_tokens']} tokens exceed the context length {model.card.context_length}"
            continue
        prompt = (text_ids * (length // max(len(text_ids), 1) + 1))[:length]
        ttft, rates, step_ms = [], [], []
        for run in range(spec["warmup"] + spec["repeats"]):
            start = time.perf_counter()
            stamps = [time.perf_counter() for _ in model.token_stream(prompt, params)]
            if run < spec["warmup"]:
                continue
            ttft.append((stamps[0] - start) * 1000)
            rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
            step_ms.extend(np.diff(stamps) * 1000)
        by_length[str(length)] = {
            "ttft_ms": float(np.median(ttft)),
            "decode_tok_s": float(np.median(rates)),
            "token_latency_ms": _percentiles(step_ms),
        }
    head = by_length.get(str(spec["headline_prompt_tokens"])) or next(iter(by_length.values()), {})
    longest = max((int(n) for n in by_length), default=0)
    return {**head, "by_prompt_tokens": by_length, "skipped_prompt_tokens": skipped,
            "prompt_tokens": spec["headline_prompt_tokens"], "new_tokens": spec["new_tokens"],
            "max_prompt_tokens": longest, "max_context": longest + spec["new_tokens"]}


def bench_encoder(model, spec: dict) -> dict:
    from slmops.evaluate.metrics import eval_sentences

    data = eval_sentences()
    pool = data["queries"] + data["documents"]
    texts = (pool * (spec["items"] // len(pool) + 1))[: spec["items"]]
    if hasattr(model, "embed"):
        run = model.embed
    elif hasattr(model, "mask_logits"):  # fill-mask: predict one mask appended to each text
        run = lambda batch, batch_size: model.mask_logits(
            [f"{t} {model.mask_token}" for t in batch], batch_size=batch_size)
    else:  # cross-encoder: score (query, text) pairs
        run = lambda batch, batch_size: model.scores(data["queries"][0], batch, batch_size=batch_size)
    by_batch = {}
    for batch_size in spec["batch_sizes"]:
        rates, latency = [], []
        for i in range(spec["warmup"] + spec["repeats"]):
            start = time.perf_counter()
            if batch_size == 1:
                for text in texts[: min(len(texts), 64)]:
                    t0 = time.perf_counter()
                    run([text], batch_size=1)
                    latency.append((time.perf_counter() - t0) * 1000)
                n = min(len(texts), 64)
            else:
                run(texts, batch_size=batch_size)
                n = len(texts)
            if i >= spec["warmup"]:
                rates.append(n / (time.perf_counter() - start))
        by_batch[str(batch_size)] = {"items_per_s": float(np.median(rates)),
                                     **({"latency_ms": _percentiles(latency)} if latency else {})}
    largest = by_batch[str(max(spec["batch_sizes"]))]
    max_seq = max(len(ids) for ids in model.tokenizer.encode_batch(texts, max_length=model.max_length)[0])
    single = by_batch.get("1", {}).get("latency_ms")
    return {"items_per_s": largest["items_per_s"], "batch_size": max(spec["batch_sizes"]), "max_seq_tokens": max_seq,
            **({"latency_ms_batch1": single} if single else {}), "by_batch_size": by_batch}


def main() -> int:
    spec = json.loads(sys.stdin.read())
    profile = spec["profile"]
    with RssSampler(spec["sample_interval_ms"]) as sampler:
        rss_start = sampler.current()
        from slmops.runtime.open import open_folder

        start = time.perf_counter()
        model = open_folder(Path(spec["folder"]), device=profile["device"], threads=profile["threads"], verify=False)
        load_s = time.perf_counter() - start
        rss_loaded = sampler.current()
        task = model.card.task
        result = bench_decoder(model, spec) if task == "causal-lm" else bench_encoder(model, spec)
    session = model.session if hasattr(model, "session") else model.graph.session
    result.update({
        "task": task,
        "load_s": load_s,
        "rss_start_mb": rss_start,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_sampled_mb": sampler.peak,
        "providers": session.get_providers(),
        "pid": os.getpid(),
        "torch_imported": "torch" in sys.modules,
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
