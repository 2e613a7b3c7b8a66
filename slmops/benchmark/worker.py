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

    def threads(self) -> int:
        return int(self._proc.num_threads())

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


def main() -> int:
    spec = json.loads(sys.stdin.read())
    profile = spec["profile"]
    with RssSampler(spec["sample_interval_ms"]) as sampler:
        rss_start = sampler.current()
        from slmops.runtime.open import open_folder
        from slmops.runtime.pages import wait_for_huge_pages
        from slmops.tasks import get_task

        start = time.perf_counter()
        optimized = Path(spec["optimized_dir"]) if spec.get("optimized_dir") else None
        model = open_folder(
            Path(spec["folder"]),
            device=profile["device"],
            threads=profile["threads"],
            verify=False,
            optimized_dir=optimized,
        )
        load_s = time.perf_counter() - start
        # the open moves the weights onto huge pages in a thread: time the steady state (load_s is the open's)
        wait_for_huge_pages()
        if spec.get("warm_only"):  # the harness's first run: it only writes the optimized graph
            print(json.dumps({"warm": True, "load_s": load_s}))
            return 0
        rss_loaded = sampler.current()
        task = model.card.task
        result = get_task(task).impl().bench(model, spec)
    session = model.session if hasattr(model, "session") else model.graph.session
    result.update(
        {
            "task": task,
            "load_s": load_s,
            "rss_start_mb": rss_start,
            "rss_after_load_mb": rss_loaded,
            "peak_rss_mb": peak_rss_mb(),
            "peak_rss_sampled_mb": sampler.peak,
            "providers": session.get_providers(),
            "pid": os.getpid(),
            "process_threads": sampler.threads(),  # onnxruntime's pool, the sampler and the interpreter's own
            "torch_imported": "torch" in sys.modules,
        }
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
