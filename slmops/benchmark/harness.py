"""Run the benchmark worker for a candidate, one fresh subprocess per device profile, and collect the results."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from slmops.artifacts import folder_size, read_manifest
from slmops.benchmark.config import BenchmarkConfig, DeviceProfile
from slmops.benchmark.machine import MachineProbe, busy_reasons, cpu_description
from slmops.errors import BenchmarkError, ConfigError
from slmops.results import BenchReport, MachineState, write_result
from slmops.runtime.session import DEVICE_PROVIDERS
from slmops.settings import get_settings

logger = logging.getLogger(__name__)


def machine_context(profile: DeviceProfile) -> dict[str, Any]:
    """CPU model and flags, threads and the onnxruntime build, recorded with every result."""
    import onnxruntime as ort

    cpu, flags = cpu_description()
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "threads": profile.threads,
        "device": profile.device,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }


def unavailable_reason(profile: DeviceProfile) -> str | None:
    """Why ``profile`` cannot run here (its execution provider is missing), or None."""
    import onnxruntime as ort

    needed = DEVICE_PROVIDERS[profile.device][0]
    available = ort.get_available_providers()
    if needed not in available:
        return (
            f"{needed} is not available in onnxruntime {ort.__version__} here (available: {', '.join(available)}); "
            f"install onnxruntime-gpu on a machine with an NVIDIA GPU to run profile {profile.name!r}"
        )
    return None


# headline metric -> the worker's key holding its value in every timed repeat
SPREAD_KEYS = {
    "decode_tok_s": "decode_tok_s_runs",
    "ttft_ms": "ttft_ms_runs",
    "items_per_s": "items_per_s_runs",
    "latency_p95_ms": "latency_p95_ms_runs",
}


def spread(values: list[float]) -> float | None:
    """(max - min) / median of the repeats: how far apart identical runs landed; None for fewer than two."""
    if len(values) < 2:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return (ordered[-1] - ordered[0]) / median if median > 0 else None


def repeat_spreads(result: dict[str, Any]) -> dict[str, float]:
    """Headline metric -> spread of its timed repeats, for the metrics the worker reported repeats of."""
    out = {}
    for metric, key in SPREAD_KEYS.items():
        value = spread([float(v) for v in result.get(key, [])])
        if value is not None:
            out[metric] = value
    return out


def _measure(folder: Path, config: BenchmarkConfig, profile: DeviceProfile) -> dict[str, Any]:
    """Run the profile, again after a pause while the machine is busy (``busy_retries``); keep the quietest run.

    A first worker only opens the candidate, writing onnxruntime's optimized graph into a temporary cache; the
    measured ones open that, as ``slmops.load`` opens a model it has opened before.

    The result carries ``machine``: the state of the machine during the kept run, with ``busy`` and
    its reasons when even the last try was busy (such numbers never move an alias).
    """
    cache = get_settings().cache_dir  # on disk: an fp32 graph of a 1.7B model is 7 GB, and /tmp may be in memory
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-optimized-", dir=cache) as optimized:
        # Measured as slmops.load serves: on onnxruntime's optimized graph, cached by an earlier open. Opening the
        # graph itself optimizes it in the process and holds all of it in memory: SmolLM2 wo-int8 peaked at 392 MB
        # that way against 252 MB through the cache (2026-12-01), and every peak the registry ranked on was that.
        _run_profile(folder, config, profile, optimized_dir=Path(optimized), warm_only=True)
        return _measure_warm(folder, config, profile, Path(optimized))


def _measure_warm(folder: Path, config: BenchmarkConfig, profile: DeviceProfile, optimized: Path) -> dict[str, Any]:
    tries: list[tuple[dict[str, Any], MachineState]] = []
    for attempt in range(config.busy_retries + 1):
        if attempt:
            time.sleep(config.busy_wait_s)
        with MachineProbe(threads=profile.threads) as probe:
            result = _run_profile(folder, config, profile, optimized_dir=optimized)
        state = probe.state(process_threads=result.get("process_threads"))
        reasons = busy_reasons(state, config)
        state = state.model_copy(update={"busy": bool(reasons), "busy_reasons": reasons, "attempts": attempt + 1})
        tries.append((result, state))
        if not reasons:
            break
        left = config.busy_retries - attempt
        logger.warning(
            "benchmark of %s on %s ran on a busy machine (%s); %s",
            folder.name,
            profile.name,
            "; ".join(reasons),
            f"measuring again in {config.busy_wait_s:g} s ({left} more)" if left else "flagged: it moves no alias",
        )
    result, state = min(tries, key=lambda t: (t[1].busy, t[1].other_cpu_pct or 0.0))
    return {**result, "machine": state.model_dump(mode="json"), "spread": repeat_spreads(result)}


def _run_profile(
    folder: Path, config: BenchmarkConfig, profile: DeviceProfile, *, optimized_dir: Path, warm_only: bool = False
) -> dict[str, Any]:
    spec = {
        "folder": str(Path(folder).resolve()),
        "profile": profile.model_dump(),
        **config.model_dump(exclude={"profiles"}),
        "optimized_dir": str(optimized_dir),
        "warm_only": warm_only,
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "slmops.benchmark.worker"],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=config.timeout_s,
            env={**os.environ, "OMP_NUM_THREADS": str(profile.threads)},
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(
            f"benchmark of {folder} on {profile.name} exceeded timeout_s={config.timeout_s}; "
            "raise it or lower new_tokens / prompt_tokens"
        ) from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BenchmarkError(
            f"benchmark worker for {folder} on {profile.name} exited {proc.returncode}: {' | '.join(tail)}"
        )
    return {**json.loads(lines[-1]), "context": machine_context(profile)}


def run_benchmark(
    folder: Path, *, config: BenchmarkConfig, profiles: dict[str, DeviceProfile], out: Path | None = None
) -> BenchReport:
    """Measure the candidate in ``folder`` on each configured profile, each in a fresh subprocess.

    A profile whose device is absent is skipped with its reason. The first profile that ran
    provides the headline numbers at the top level. Raises ConfigError for an unknown profile,
    BenchmarkError when a worker fails or times out.
    """
    manifest = read_manifest(folder)
    results: dict[str, Any] = {}
    for name in config.profiles:
        try:
            profile = profiles[name]
        except KeyError:
            raise ConfigError(f"benchmark profile {name!r} is not defined; known: {', '.join(profiles)}") from None
        reason = unavailable_reason(profile)
        if reason is not None:  # recorded in the report; callers warn once per build (slmops.cli.report)
            logger.info("skipping profile %s: %s", name, reason)
            results[name] = {"skipped": True, "reason": reason}
            continue
        results[name] = _measure(folder, config, profile)
    ran = [n for n, r in results.items() if not r.get("skipped")]
    headline = results[ran[0]] if ran else {}
    report = BenchReport(
        headline_profile=ran[0] if ran else None,
        device=profiles[ran[0]].device if ran else None,
        **{k: headline[k] for k in BenchReport.HEADLINE if k in headline},
        context=headline.get("context"),
        machine=headline.get("machine"),
        spread=headline.get("spread", {}),
        profiles=results,
        size_mb=folder_size(folder) / 2**20,
        candidate_digest=manifest.digest(),
        config=config.model_dump(),
    )
    if out is not None:
        write_result(out, report)
    return report
