"""What a build prints per stage: one summary line, plain progress lines when piped, skipped profiles once."""

from __future__ import annotations

import io
import logging
import threading

import pytest
from rich.console import Console

from slmops.cli import report


def _piped() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, force_terminal=False, color_system=None), buffer


def test_a_stage_prints_one_line_with_its_summary() -> None:
    console, buffer = _piped()
    with report.stage("quantize", "tiny-llama", steps=2, console=console) as progress:
        progress.advance("fp32")
        progress.advance("wo-int8")
        progress.done({"variant": "tiny-llama", "candidates": {"fp32": "a", "wo-int8": "b"}})
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("✓ quantize  tiny-llama") and "2 candidates: fp32, wo-int8" in lines[0]


def test_piped_output_gets_plain_progress_lines_and_a_failure_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "PLAIN_EVERY_S", 0.01)
    console, buffer = _piped()
    ticked = threading.Event()
    monkeypatch.setattr(console, "print", _spy(console.print, ticked))
    with pytest.raises(RuntimeError), report.stage("export", "tiny-bert", console=console):
        assert ticked.wait(5)
        raise RuntimeError("boom")
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("  export tiny-bert: running, ")
    assert lines[-1].startswith("✗ export    tiny-bert  failed after ")


def _spy(print_, event: threading.Event):
    def spy(*args, **kwargs):
        print_(*args, **kwargs)
        event.set()

    return spy


def test_skipped_profiles_are_warned_once_per_build(caplog: pytest.LogCaptureFixture) -> None:
    from slmops.results import BenchReport

    reason = "CUDAExecutionProvider is not available"
    skipped = {"skipped": True, "reason": reason}

    def bench_report(**ran: dict) -> BenchReport:
        return BenchReport(
            headline_profile="cpu-2t",
            device="cpu",
            candidate_digest="d",
            size_mb=1.0,
            config={},
            profiles={**ran, "cuda": skipped},
        )

    bench = [
        {"fp32": bench_report(**{"cpu-2t": {"decode_tok_s": 9.0}}), "wo-int8": bench_report(**{"cpu-2t": {}})},
        {"fp32": bench_report(**{"cpu-2t": {"items_per_s": 9.0}})},
    ]
    assert report.skipped_profiles(bench) == {"cuda": reason}
    with caplog.at_level(logging.WARNING, logger="slmops"):
        report.warn_skipped_profiles(bench)
    assert [r.getMessage() for r in caplog.records] == [f"benchmark profile cuda skipped: {reason}"]
