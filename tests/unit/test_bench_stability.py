"""The benchmark's machine state and busy verdict, the spread of repeats, and the alias-move rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slmops.benchmark.config import BenchmarkConfig
from slmops.benchmark.harness import repeat_spreads, spread
from slmops.benchmark.machine import MachineProbe, busy_reasons, read_cpu_times
from slmops.recommend.moves import decide
from slmops.recommend.usecases import Constraints
from slmops.results import MachineState
from slmops.runtime.ranking import Candidate, rank


def _state(**kw: float | None) -> MachineState:
    base = {"load_before": 0.1, "load_after": 0.2, "steal_pct": 0.0, "other_cpu_pct": 1.0, "worker_cpu_s": 2.0}
    return MachineState(**{**base, **kw}, cpu_count=2, threads=2)


def test_read_cpu_times_parses_the_aggregate_line(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 50 800 20 0 30 100 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    import os

    hz = os.sysconf("SC_CLK_TCK")
    times = read_cpu_times(stat)
    assert times is not None
    assert (times.busy * hz, times.steal * hz, times.total * hz) == pytest.approx((180, 100, 1100))
    stat.write_text("intr 1 2 3\n")
    assert read_cpu_times(stat) is None
    assert read_cpu_times(tmp_path / "missing") is None


def test_a_probe_counts_the_worker_cpu_time_as_its_own() -> None:
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    with MachineProbe(threads=1) as probe:
        subprocess.run([sys.executable, "-c", burn], check=True)
    state = probe.state(process_threads=3)
    assert state.worker_cpu_s >= 0.3
    assert (state.threads, state.process_threads, state.busy) == (1, 3, False)
    assert state.load_before is not None and state.load_after is not None
    assert state.steal_pct is not None and state.steal_pct >= 0  # Linux: /proc/stat has a steal column
    assert state.other_cpu_pct is not None and 0 <= state.other_cpu_pct <= 100


@pytest.mark.parametrize(
    ("state", "reasons"),
    [
        (_state(), []),
        (_state(load_before=2.9), []),  # 1.45 per CPU: a previous benchmark's own threads, not a neighbour
        (_state(load_before=3.5), ["load average 3.50 before the run > 3.00 (1.5 x 2 CPUs)"]),
        (_state(steal_pct=12.5), ["CPU steal 12.5% > 10%"]),
        (
            _state(other_cpu_pct=40.0, steal_pct=None, load_before=None),
            ["other processes used 40.0% of the CPU time > 25%"],
        ),
    ],
)
def test_busy_reasons_name_each_threshold_crossed(state: MachineState, reasons: list[str]) -> None:
    assert busy_reasons(state, BenchmarkConfig()) == reasons


def test_the_busy_thresholds_are_validated_config() -> None:
    assert busy_reasons(_state(other_cpu_pct=10.0), BenchmarkConfig(busy_other_cpu_pct=5)) != []
    with pytest.raises(ValueError, match="busy_steal_pct"):
        BenchmarkConfig(busy_steal_pct=150)


def test_spread_is_the_range_over_the_median() -> None:
    assert spread([90.0, 100.0, 120.0]) == pytest.approx(0.3)
    assert spread([100.0]) is None
    assert repeat_spreads({"decode_tok_s_runs": [100, 110], "ttft_ms_runs": [10, 10], "items_per_s": 3}) == {
        "decode_tok_s": pytest.approx(10 / 105),
        "ttft_ms": 0.0,
    }


def _cand(version: str, recipe: str, tok_s: float, *, spread: float = 0.0, busy: bool = False, **more: float):
    tags = {"slmops.variant": "v", "slmops.recipe": recipe, "slmops.gate": "passed", "slmops.device": "cpu"}
    metrics = {"bench.decode_tok_s": tok_s, "bench.decode_tok_s.spread": spread, "machine.busy": float(busy)}
    return Candidate("slmops-causal-lm", version, tags, {**metrics, **more})


def _decide(cands: list[Candidate], incumbent: str | None, *, margin: float = 0.1, **limits: float):
    ranked = rank(cands, Constraints(task="causal-lm", **limits), "decode_speed", incumbent=incumbent)
    return decide(ranked, incumbent=incumbent, objective="decode_speed", margin=margin)


def test_a_challenger_must_beat_the_larger_of_margin_and_spread() -> None:
    assert _decide([_cand("1", "a", 100), _cand("2", "b", 109)], "1").moved is False
    moved = _decide([_cand("1", "a", 100), _cand("2", "b", 111)], "1")
    assert moved.moved and moved.target is not None and moved.target.version == "2"
    assert moved.reason == "from v1 v:a (100.0 tok/s) to v2 v:b (111.0 tok/s): +11% > margin 10%"
    noisy = _decide([_cand("1", "a", 100, spread=0.25), _cand("2", "b", 120)], "1")
    assert (noisy.moved, noisy.target.version if noisy.target else None) == (False, "1")
    assert noisy.reason.endswith("within the repeat spread 25%")
    assert _decide([_cand("1", "a", 100), _cand("2", "b", 102)], "1", margin=0.0).moved is True


def test_busy_numbers_never_move_an_alias_but_an_ineligible_incumbent_is_replaced() -> None:
    assert _decide([_cand("1", "a", 100), _cand("2", "b", 300, busy=True)], "1").moved is False
    assert _decide([_cand("1", "a", 20, busy=True), _cand("2", "b", 100)], "1").moved is False
    rss = [{"bench.peak_rss_mb": 900}, {"bench.peak_rss_mb": 400}]
    gone = _decide([_cand("1", "a", 100, **rss[0]), _cand("2", "b", 90, **rss[1])], "1", max_memory_mb=500)
    assert gone.moved and gone.target is not None and gone.target.version == "2"
    assert "the incumbent is no longer eligible (peak RSS 900 MB > 500 MB)" in gone.reason
    unset = _decide([_cand("1", "a", 100)], None)
    assert unset.moved and unset.reason == "set to v1 v:a (100.0 tok/s): the alias was not set"
    dropped = _decide([_cand("1", "a", 100, **{"bench.peak_rss_mb": 900})], "1", max_memory_mb=500)
    assert (dropped.target, dropped.moved) == (None, True) and dropped.reason.startswith("dropped from v1")


def test_only_the_incumbent_is_spared_a_latency_miss_within_noise() -> None:
    slow = {"bench.ttft_ms": 1600.0, "bench.ttft_ms.spread": 0.1}
    cands = [_cand("1", "a", 100, **slow), _cand("2", "b", 100, **slow)]
    ranked = rank(cands, Constraints(task="causal-lm", max_latency_ms=1500), "decode_speed", incumbent="1")
    by_version = {c.version: c for c in ranked}
    assert by_version["1"].rejected == [] and by_version["1"].notes == [
        "bench.ttft_ms 1600 ms > 1500 ms tolerated for the incumbent: within its repeat spread 10%"
    ]
    assert by_version["2"].rejected == ["bench.ttft_ms 1600 ms > 1500 ms"]
    far = [_cand("1", "a", 100, **{**slow, "bench.ttft_ms": 1700.0})]
    assert rank(far, Constraints(task="causal-lm", max_latency_ms=1500), "decode_speed", incumbent="1")[0].rejected


def test_a_latency_miss_on_a_busy_machine_rejects_no_candidate() -> None:
    """A first build on a busy machine (every TTFT over the limit) still sets the alias, flagged in its reason."""
    busy_slow = {"bench.ttft_ms": 1900.0}
    cands = [_cand("1", "a", 13, busy=True, **busy_slow), _cand("2", "b", 9, busy=True, **busy_slow)]
    ranked = rank(cands, Constraints(task="causal-lm", max_latency_ms=1500), "decode_speed")
    assert [c.rejected for c in ranked] == [[], []]
    assert ranked[0].notes == [
        "bench.ttft_ms 1900 ms > 1500 ms tolerated: measured on a busy machine, which only makes it slower"
    ]
    first = decide(ranked, incumbent=None, objective="decode_speed", margin=0.1)
    assert first.moved and first.target is ranked[0] and "busy machine" in first.reason
    quiet_slow = [_cand("3", "c", 50, **busy_slow)]  # measured quiet: the miss is real
    assert rank(quiet_slow, Constraints(task="causal-lm", max_latency_ms=1500), "decode_speed")[0].rejected
