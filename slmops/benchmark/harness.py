"""Run the benchmark worker for a candidate in a fresh subprocess and collect its result with context."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from slmops.artifacts import folder_size, read_manifest, write_json_atomic
from slmops.benchmark.config import BenchmarkConfig
from slmops.errors import BenchmarkError

logger = logging.getLogger(__name__)


def machine_context(threads: int) -> dict[str, Any]:
    """CPU model and flags, thread count and onnxruntime build, recorded with every result."""
    import onnxruntime as ort

    cpu, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = sorted(have & {"avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile"})
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }


def run_benchmark(folder: Path, *, config: BenchmarkConfig, device: str = "cpu", out: Path | None = None) -> dict[str, Any]:
    """Measure the candidate in ``folder`` in a fresh subprocess; write JSON to ``out`` if given.

    Raises BenchmarkError when the subprocess fails, times out or prints no result.
    """
    manifest = read_manifest(folder)
    spec = {"folder": str(Path(folder).resolve()), "device": device, **config.model_dump()}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "slmops.benchmark.worker"],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=config.timeout_s,
            env={**os.environ, "OMP_NUM_THREADS": str(config.threads)},
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"benchmark of {folder} exceeded timeout_s={config.timeout_s}; raise it or lower new_tokens") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BenchmarkError(f"benchmark worker for {folder} exited {proc.returncode}: {' | '.join(tail)}")
    result = json.loads(lines[-1])
    result.update(
        {
            "device": device,
            "size_mb": folder_size(folder) / 2**20,
            "candidate_digest": manifest.digest(),
            "context": machine_context(config.threads),
            "config": config.model_dump(),
        }
    )
    if out is not None:
        write_json_atomic(out, result)
    return result
