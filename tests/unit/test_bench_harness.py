"""benchmarks/compare.py's quiet-machine bookkeeping: /proc sampling, busy rounds left out of the medians."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def harness():
    sys.path.insert(0, str(BENCHMARKS))  # the benchmarks are scripts: compare.py imports quiet.py beside it
    try:
        import compare
        import quiet

        yield compare, quiet
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads Linux /proc")
def test_sample_reads_proc(harness) -> None:
    _, quiet = harness
    total0, idle0, steal0 = quiet.cpu_times()
    snap = quiet.sample(0.2)
    total1, idle1, steal1 = quiet.cpu_times()
    assert total1 > total0 and idle1 >= idle0 and steal1 >= steal0
    assert 0 <= snap.busy_pct <= 100 and 0 <= snap.steal_pct <= 100 and snap.load1 >= 0


def test_limits_name_the_busy_value(harness) -> None:
    _, quiet = harness
    limits = quiet.Limits(max_load=1.0, max_busy_pct=20, max_steal_pct=5)
    assert limits.why_busy(quiet.Snapshot(0.3, 0.2, 0.1, busy_pct=3, steal_pct=0)) is None
    assert "1.50" in limits.why_busy(quiet.Snapshot(1.5, 1, 1, busy_pct=3, steal_pct=0))
    assert "45%" in limits.why_busy(quiet.Snapshot(0.3, 1, 1, busy_pct=45, steal_pct=0))
    assert "steal 9.0%" in limits.why_busy(quiet.Snapshot(0.3, 1, 1, busy_pct=3, steal_pct=9))


def _round(tok_s: float, load: float) -> dict:
    state = {"load1": load, "load5": load, "load15": load, "busy_pct": 1.0, "steal_pct": 0.0}
    return {"decode_tok_s": tok_s, "ttft_ms": 100.0, "ppl": None, "machine": {"before": state, "after": state}}


def test_busy_rounds_are_left_out_of_the_medians(harness) -> None:
    compare, _ = harness
    ours = [_round(100, 0.2), _round(40, 3.0), _round(110, 0.3)]
    ours[0]["ppl"] = 14.5
    llama = [_round(100, 0.2), _round(90, 3.0), _round(100, 0.3)]
    row = compare._aggregate(ours, llama, keep=[0, 2])
    assert row["decode_tok_s"] == 105 and row["vs_llama_rounds"] == [1.0, 1.1] and row["ppl"] == 14.5
    assert row["decode_tok_s_rounds"] == [100, 40, 110]  # every round stays recorded
    assert row["ttft_vs_llama"] == 1.0 and row["ttft_vs_llama_rounds"] == [1.0, 1.0]
    header = compare.machine_header({"a": ours, "b": llama}, [False, True, False])
    assert "load before rows 0.20-3.00" in header and "busy rounds 1 of 3 (left out of the medians)" in header
    assert "NONE QUIET" in compare.machine_header({"a": ours}, [True, True, True])


def test_table_prints_both_ratios_and_the_load_row(harness, capsys: pytest.CaptureFixture[str]) -> None:
    compare, _ = harness
    llama = [_round(100, 0.2), _round(100, 0.2)]
    ours = [{**_round(120, 0.2), "ttft_ms": 60.0}, {**_round(125, 0.2), "ttft_ms": 55.0}]
    rows = {}
    for name, results in (("slmops.load('chat-cpu') -> gguf-q4", ours), ("llama.cpp Q4_1", llama)):
        row = compare._aggregate(results, llama, keep=[0, 1])
        rows[name] = {**row, "peak_rss_mb": 280.0, "size_mb": 157.0, "load_s": 0.6}
    compare._print_tables(
        rows, rows["llama.cpp Q4_1"], {"prompt_tokens": 128, "new_tokens": 64, "rounds": 2, "machine": "m"}
    )
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("slmops.load"))
    assert "0.57x (0.55-0.60)" in line and "1.23x (1.20-1.25)" in line


def test_the_cpu_and_a_llama_build_below_it_are_named(harness, tmp_path: Path) -> None:
    compare, _ = harness
    from slmops.benchmark.machine import cpu_description

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor @ 2.00GHz\n"
        "flags\t\t: fpu sse2 avx f16c fma avx2 avx512f avx512bw\n"
    )
    assert cpu_description(cpuinfo) == (
        "Intel(R) Xeon(R) Processor @ 2.00GHz",
        ["avx", "avx2", "fma", "f16c", "avx512f", "avx512bw"],
    )
    assert cpu_description(tmp_path / "absent")[1] == []
    note = compare.llama_build_note(["SSE3", "AVX", "AVX2", "F16C", "FMA"], ["avx2", "avx512f"])
    assert note == "llama.cpp build: SSE3 AVX AVX2 F16C FMA (CPU: avx2 avx512f)"


def test_another_llama_build_must_be_a_folder_holding_llama_cpp(harness, tmp_path: Path) -> None:
    compare, _ = harness
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="give NAME=FOLDER"):
        compare._llama_build_arg(str(tmp_path))
    with pytest.raises(argparse.ArgumentTypeError, match="holds no llama_cpp package"):
        compare._llama_build_arg(f"native={tmp_path}")
    (tmp_path / "llama_cpp").mkdir()
    (tmp_path / "llama_cpp" / "__init__.py").write_text("")
    assert compare._llama_build_arg(f"native={tmp_path}") == ("native", str(tmp_path.resolve()))


class _Turn:
    """Stands in for a loaded runtime in take_turns: records when it was asked, answers from a list."""

    def __init__(self, name: str, log: list[str], answers: list[dict]) -> None:
        self.name, self.log, self.answers = name, log, iter(answers)

    def run(self) -> dict:
        self.log.append(self.name)
        return next(self.answers)


def _gen(ttft: float, rate: float) -> dict:
    return {"ttft_ms": ttft, "decode_tok_s": rate}


def test_paired_rounds_take_turns_and_count_every_token(harness) -> None:
    compare, _ = harness
    log: list[str] = []
    ours = _Turn("ours", log, [_gen(100.0, 100.0), _gen(300.0, 50.0), _gen(200.0, 100.0)])
    llama = _Turn("llama", log, [_gen(400.0, 80.0)] * 3)
    results = compare.take_turns([ours, llama], repeats=3)
    assert log == ["ours", "llama"] * 3  # one generation each, in turn, not all of one first
    # tokens over time, as one long generation: 3 equal generations at 100, 50, 100 tok/s -> 75, not the mean 83.3
    assert results[0]["decode_tok_s"] == pytest.approx(75.0) and results[0]["ttft_ms"] == 200.0
    assert results[0]["decode_tok_s_runs"] == [100.0, 50.0, 100.0] and results[1]["decode_tok_s"] == pytest.approx(80.0)
    encoder = _Turn("encoder", log, [{"items_per_s": 300.0}, {"items_per_s": 100.0}])
    assert compare.take_turns([encoder], repeats=2)[0]["items_per_s"] == pytest.approx(150.0)  # a rate too


class _Restartable(_Turn):
    def __init__(self, name: str, log: list[str], answers: list[dict]) -> None:
        super().__init__(name, log, answers)
        self.info: dict = {}

    def restart(self) -> None:
        self.log.append(f"restart {self.name}")


def test_each_paired_round_starts_fresh_processes(harness, monkeypatch: pytest.MonkeyPatch) -> None:
    compare, quiet = harness
    import argparse

    calm = quiet.Snapshot(0.1, 0.1, 0.1, busy_pct=0, steal_pct=0)
    monkeypatch.setattr(quiet, "wait_for_quiet", lambda limits, max_wait_s: calm)
    limits = quiet.Limits(max_load=1.0, max_busy_pct=20, max_steal_pct=5)
    for fresh in (True, False):
        log: list[str] = []
        contestants = {n: _Restartable(n, log, [_gen(100.0, 100.0)] * 4) for n in ("a", "b")}
        args = argparse.Namespace(paired_rounds=2, paired_repeats=2, paired_fresh=fresh, retries=0, settle_s=0)
        runs, busy, keep = compare.turn_rounds(args, limits, contestants)
        restarts = ["restart b", "restart a"] if fresh else []  # round 2's order: b, a; round 1 keeps the first load
        assert log == ["a", "b", "a", "b", *restarts, "b", "a", "b", "a"]
        assert len(runs["a"]) == 2 and busy == [False, False] and keep == [0, 1]


def test_a_contestant_that_no_longer_loads_stops_the_table(harness) -> None:
    compare, _ = harness
    contestant = compare.Contestant("slmops", {"new_tokens": 4, "prompt_ids": [1, 2]})  # no recipe in the spec
    try:
        with pytest.raises(RuntimeError, match="failed to load again: .*KeyError: 'recipe'"):
            contestant.restart()
        assert all(proc.poll() is not None for proc in contestant.procs)
    finally:
        contestant.close()


def test_the_paired_table_prints_each_ratio_and_its_spread(harness, capsys: pytest.CaptureFixture[str]) -> None:
    compare, _ = harness
    llama = [_round(100, 0.2), _round(100, 0.2)]
    ours = [_round(110, 0.2), _round(120, 0.2)]
    rows = {name: compare._aggregate(r, llama, keep=[0, 1]) for name, r in (("slmops wo-int8", ours), ("llama", llama))}
    rows["slmops gguf-q4"] = {"error": ["the slmops process failed: KeyError: 'recipe'"]}
    compare._print_paired(rows, {"prompt_tokens": 128, "new_tokens": 64, "rounds": 2, "repeats": 8, "machine": "m"})
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("slmops wo-int8"))
    assert "1.15x (1.10-1.20)  +-4.3%" in line  # (1.20 - 1.10) / (1.20 + 1.10)
    assert line.endswith("110-120 +-4.3%")  # its own speed across the rounds
    assert next(x for x in out.splitlines() if x.startswith("llama ")).endswith("100-100 +-0.0%")
    assert "8 generations each" in out and "KeyError: 'recipe'" in out
    rows["llama"]["build"] = "llama-cpp-python 0.3.36 in /x: AVX2 FMA"
    compare._print_paired(rows, {"prompt_tokens": 128, "new_tokens": 64, "rounds": 2, "repeats": 8, "machine": "m"})
    assert "llama: llama-cpp-python 0.3.36 in /x: AVX2 FMA" in capsys.readouterr().out.splitlines()
    assert compare.spread([0.95, 1.05]) == pytest.approx(0.05)


def test_a_contestant_that_cannot_load_reports_why(harness) -> None:
    compare, _ = harness
    contestant = compare.Contestant("slmops", {"new_tokens": 4, "prompt_ids": [1, 2]}, processes=2)  # no recipe
    try:
        assert "KeyError: 'recipe'" in contestant.info["error"][-1]
        assert len(contestant.procs) == 1  # the first process failed: no second one is started
        assert contestant.procs[0].poll() is not None  # it ended; nothing is left waiting on its pipe
    finally:
        contestant.close()


def test_the_encoder_paired_table_prints_ratios_to_torch(harness, capsys: pytest.CaptureFixture[str]) -> None:
    compare, _ = harness
    rows = {
        "torch fp32": {"items_per_s": 250.0, "vs_torch": 1.0, "vs_torch_rounds": [1.0, 1.0]},
        "slmops dyn-int8-pc": {"items_per_s": 760.0, "vs_torch": 3.05, "vs_torch_rounds": [2.9, 3.1, 3.05]},
    }
    compare._print_encoders_paired(rows, {"rounds": 3, "repeats": 8, "machine": "m"})
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("slmops dyn-int8-pc"))
    assert "3.05x (2.90-3.10)" in line and line.endswith("+-3.3%")


def test_a_contestant_with_two_processes_gives_them_turns_in_turn(harness, monkeypatch: pytest.MonkeyPatch) -> None:
    compare, _ = harness
    started: list[str] = []
    count = iter(range(100))

    class Loaded:
        def __init__(self, name: str, spec: dict, path: str | None) -> None:
            self.number = next(count)
            started.append(name)
            self.info = {"loaded": self.number}

        def run(self) -> dict:
            return {"process": self.number}

        def close(self) -> None:
            started.append(f"closed {self.number}")

    monkeypatch.setattr(compare, "_Process", Loaded)
    contestant = compare.Contestant("slmops", {}, processes=2)
    assert [contestant.run()["process"] for _ in range(4)] == [0, 1, 0, 1]
    contestant.restart()
    assert started == ["slmops", "slmops", "closed 0", "closed 1", "slmops", "slmops"]
    assert [contestant.run()["process"] for _ in range(2)] == [2, 3]  # the new ones, from the first again
    contestant.close()
