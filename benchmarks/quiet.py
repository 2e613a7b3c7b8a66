"""How quiet the machine is around a benchmark row: load averages and CPU use/steal from /proc (Linux).

Used by compare.py. The 1-minute load average trails by a minute and counts the harness's own previous
row, so a row is also judged by what the other processes did in a short sample just before it
(``/proc/stat``: the share of CPU time that was not idle while this process slept) and by the steal a
hypervisor took. /proc/stat is read by slmops/benchmark/machine.py, as the bench stage does.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

from slmops.benchmark.machine import read_cpu_times


def cpu_times() -> tuple[float, float, float]:
    """(total, idle incl. iowait, steal) CPU seconds of all CPUs since boot; zeros where /proc/stat is absent."""
    times = read_cpu_times()
    if times is None:
        return 0.0, 0.0, 0.0
    # rounded to well below a clock tick (10 ms): the float difference could otherwise step back by 1e-11
    return times.total, round(times.total - times.busy - times.steal, 6), times.steal


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return float("nan"), float("nan"), float("nan")


@dataclass(frozen=True)
class Snapshot:
    """The machine over a short window: load averages at its end, CPU busy and steal shares within it (%)."""

    load1: float
    load5: float
    load15: float
    busy_pct: float
    steal_pct: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def sample(seconds: float = 1.0) -> Snapshot:
    """Sleep ``seconds`` and report what the rest of the machine did meanwhile."""
    total0, idle0, steal0 = cpu_times()
    time.sleep(seconds)
    return _between((total0, idle0, steal0), cpu_times())


def _between(before: tuple[float, float, float], after: tuple[float, float, float]) -> Snapshot:
    total = max(after[0] - before[0], 1e-9)
    busy = max(0.0, 100 * (total - (after[1] - before[1])) / total)  # not -0.0 from float rounding
    steal = 100 * (after[2] - before[2]) / total
    return Snapshot(*load_average(), busy_pct=round(busy, 1), steal_pct=round(steal, 1))


class Window:
    """CPU times at its start; :meth:`close` gives the snapshot over the window (e.g. one benchmark row)."""

    def __init__(self) -> None:
        self.start = cpu_times()

    def close(self) -> Snapshot:
        return _between(self.start, cpu_times())


@dataclass(frozen=True)
class Limits:
    """When the machine counts as busy before a row."""

    max_load: float  # 1-minute load average
    max_busy_pct: float  # others' CPU use in the sample before the row, % of all CPUs
    max_steal_pct: float

    def why_busy(self, snap: Snapshot) -> str | None:
        """None when ``snap`` is quiet enough, else the reason."""
        if snap.load1 > self.max_load:
            return f"load average {snap.load1:.2f} > {self.max_load:.2f}"
        if snap.busy_pct > self.max_busy_pct:
            return f"CPU {snap.busy_pct:.0f}% busy > {self.max_busy_pct:.0f}%"
        if snap.steal_pct > self.max_steal_pct:
            return f"steal {snap.steal_pct:.1f}% > {self.max_steal_pct:.1f}%"
        return None


def wait_for_quiet(limits: Limits, *, max_wait_s: float, poll_s: float = 2.0) -> Snapshot:
    """Sample until the machine is quiet or ``max_wait_s`` passed; the last sample."""
    deadline = time.monotonic() + max_wait_s
    snap = sample(min(poll_s, 1.0))
    while limits.why_busy(snap) and time.monotonic() < deadline:
        time.sleep(max(poll_s - 1.0, 0))
        snap = sample(1.0)
    return snap
