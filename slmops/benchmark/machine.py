"""How busy the machine was while a benchmark ran: load average, CPU steal and other processes' CPU time.

A benchmark on a shared or throttled machine measures the neighbours, not the model: three builds
of identical candidates measured 110, 19 and 34 tok/s. :class:`MachineProbe` wraps one benchmark
subprocess and records the load average before and after, the share of the machine's CPU time
stolen by the hypervisor (``/proc/stat``'s steal column) and the share used by processes other than
the benchmark (all busy CPU time minus the worker's own). :func:`busy_reasons` turns those numbers
into a verdict, with thresholds from the ``benchmark:`` section of configs/pipeline.yaml.
"""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from slmops.results import MachineState

if TYPE_CHECKING:
    from slmops.benchmark.config import BenchmarkConfig

# /proc/stat's aggregate "cpu" line: user nice system idle iowait irq softirq steal (guest is inside user)
_BUSY_FIELDS = (0, 1, 2, 5, 6)
_STEAL_FIELD = 7


@dataclass(frozen=True)
class CpuTimes:
    """Seconds of CPU time summed over every CPU since boot (``/proc/stat``)."""

    busy: float
    steal: float
    total: float


def read_cpu_times(path: Path = Path("/proc/stat")) -> CpuTimes | None:
    """The machine's CPU times, or None where /proc/stat is not readable (not Linux)."""
    try:
        line = path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = line.split()
    if fields[0] != "cpu" or len(fields) < 5:
        return None
    ticks = [int(v) for v in fields[1:9]] + [0] * (9 - len(fields))
    hz = os.sysconf("SC_CLK_TCK")
    return CpuTimes(
        busy=sum(ticks[i] for i in _BUSY_FIELDS) / hz,
        steal=ticks[_STEAL_FIELD] / hz,
        total=sum(ticks[:8]) / hz,
    )


# The instruction sets that decide which kernels onnxruntime (MLAS) and llama.cpp run, so ratios between them move
# with the host (SmolLM2 gguf-q4 vs llama.cpp: TTFT 0.46x on an AVX2 EPYC, 0.37-0.45x on an AVX-512 Xeon).
CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile")


def cpu_description(path: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    """(CPU model name, the CPU_FLAGS it has); the platform's machine name and no flags where cpuinfo is absent."""
    cpu, flags = platform.machine(), list[str]()
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return cpu, flags
    for line in lines:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            flags = [flag for flag in CPU_FLAGS if flag in have]
            break
    return cpu, flags


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class MachineProbe:
    """Wraps one benchmark subprocess (``with MachineProbe(threads=2) as probe: subprocess.run(...)``).

    The worker's CPU time is that of the children reaped inside the block, so run exactly one
    subprocess in it. After the block, :meth:`state` gives the machine's state over that window.
    """

    def __init__(self, *, threads: int) -> None:
        self.threads = threads
        self._before: CpuTimes | None = None
        self._after: CpuTimes | None = None
        self._load_before: float | None = None
        self._load_after: float | None = None
        self._child_cpu_s = 0.0

    def __enter__(self) -> MachineProbe:
        self._load_before = load_average()
        self._children_before = _children_cpu_s()
        self._before = read_cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        self._after = read_cpu_times()
        self._child_cpu_s = _children_cpu_s() - self._children_before
        self._load_after = load_average()

    def state(self, *, process_threads: int | None = None) -> MachineState:
        """The machine's state over the block; steal and others' CPU are None where /proc/stat is absent."""
        steal_pct = other_pct = None
        if self._before is not None and self._after is not None:
            total = self._after.total - self._before.total
            if total > 0:
                steal_pct = 100 * (self._after.steal - self._before.steal) / total
                others = (self._after.busy - self._before.busy) - self._child_cpu_s
                other_pct = 100 * max(others, 0.0) / total
        return MachineState(
            load_before=self._load_before,
            load_after=self._load_after,
            steal_pct=steal_pct,
            other_cpu_pct=other_pct,
            worker_cpu_s=self._child_cpu_s,
            cpu_count=os.cpu_count() or 1,
            threads=self.threads,
            process_threads=process_threads,
        )


def busy_reasons(state: MachineState, config: BenchmarkConfig) -> list[str]:
    """Why the machine counts as busy for this measurement (empty: it was quiet enough).

    Busy means any of: the 1-minute load average before the run above ``busy_load_per_core`` x CPUs;
    hypervisor steal above ``busy_steal_pct`` % of the machine's CPU time during the run; other
    processes using more than ``busy_other_cpu_pct`` % of it during the run.
    """
    reasons = []
    limit = config.busy_load_per_core * state.cpu_count
    if state.load_before is not None and state.load_before > limit:
        reasons.append(
            f"load average {state.load_before:.2f} before the run > {limit:.2f} "
            f"({config.busy_load_per_core:g} x {state.cpu_count} CPUs)"
        )
    if state.steal_pct is not None and state.steal_pct > config.busy_steal_pct:
        reasons.append(f"CPU steal {state.steal_pct:.1f}% > {config.busy_steal_pct:g}%")
    if state.other_cpu_pct is not None and state.other_cpu_pct > config.busy_other_cpu_pct:
        reasons.append(
            f"other processes used {state.other_cpu_pct:.1f}% of the CPU time > {config.busy_other_cpu_pct:g}%"
        )
    return reasons
