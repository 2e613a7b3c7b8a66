"""What a build prints: one line per stage and variant, progress while a stage runs, skipped devices once.

On a terminal a stage shows a transient rich progress line (spinner, steps done, elapsed time)
that the stage's one-line summary replaces when it ends. Piped output (``make run > log``, CI)
gets a plain "still running" line every ``PLAIN_EVERY_S`` seconds instead of a live display.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape

from slmops.cli.common import console as default_console
from slmops.results import BenchReport, GateReport, Recommendations, RegistryRecord

logger = logging.getLogger(__name__)
PLAIN_EVERY_S = 30.0


def _fetch(r: dict[str, Any]) -> str:
    return f"{r['source']} {r['revision'] or 'unpinned'}, {r['files']} files"


def _export(r: dict[str, Any]) -> str:
    diffs = ", ".join(f"{name} {diff:.1e}" for name, diff in r["max_abs_diff"].items())
    return f"{r['files']} files, max |onnx - torch|: {diffs}"


def _quantize(r: dict[str, Any]) -> str:
    return f"{len(r['candidates'])} candidates: {', '.join(r['candidates'])}"


def _evaluate(r: GateReport) -> str:
    passed = [n for n, c in r.candidates.items() if c.passed]
    failed = [n for n, c in r.candidates.items() if not c.passed]
    return f"gate passed: {', '.join(passed) or 'none'}" + (f"; failed: {', '.join(failed)}" if failed else "")


def _benchmark(r: dict[str, BenchReport]) -> str:
    def headline(b: BenchReport) -> str:
        if b.decode_tok_s is not None:
            return f"{b.decode_tok_s:.0f} tok/s"
        return f"{b.items_per_s:.0f} items/s" if b.items_per_s is not None else "not run"

    profiles = {b.headline_profile for b in r.values() if b.headline_profile is not None}
    return f"on {', '.join(sorted(profiles)) or 'no profile'}: " + ", ".join(f"{n} {headline(b)}" for n, b in r.items())


def _register(r: RegistryRecord) -> str:
    new = [n for n, c in r.candidates.items() if c.version and not c.reused]
    kept = [n for n, c in r.candidates.items() if c.reused]
    logged = [n for n, c in r.candidates.items() if not c.version]
    parts = [f"{len(new)} new versions"] + ([f"{len(kept)} unchanged"] if kept else [])
    return ", ".join(parts) + (f"; logged only (gate failed): {', '.join(logged)}" if logged else "")


def _recommend(r: Recommendations) -> str:
    chosen = [n for n, d in r.usecases.items() if d.chosen is not None]
    missing = [n for n, d in r.usecases.items() if d.chosen is None]
    return f"aliases set: {', '.join(chosen) or 'none'}" + (f"; no model for: {', '.join(missing)}" if missing else "")


SUMMARIES: dict[str, Callable[[Any], str]] = {
    "fetch": _fetch,
    "export": _export,
    "quantize": _quantize,
    "evaluate": _evaluate,
    "benchmark": _benchmark,
    "register": _register,
    "recommend": _recommend,
}


class StageProgress:
    """Handed to the stage body: ``advance()`` after each step, ``done(result)`` to keep the result for the summary."""

    def __init__(self, on_advance: Callable[[], None]) -> None:
        self._on_advance = on_advance
        self.result: Any = None

    def advance(self, *_: Any) -> None:
        self._on_advance()

    def done(self, result: Any) -> Any:
        self.result = result
        return result


@contextlib.contextmanager
def stage(
    name: str, subject: str = "", *, steps: int | None = None, console: Console | None = None
) -> Iterator[StageProgress]:
    """Show progress while the block runs, then print one line: stage, subject, summary, elapsed time.

    The summary comes from ``SUMMARIES[name]`` applied to what the block passed to ``done()``.
    A failing block prints a failure line and re-raises (the error itself is reported by the caller).
    """
    console = console or default_console
    start = time.monotonic()
    with _progress(console, f"{name} {subject}".strip(), steps) as advance:
        progress = StageProgress(advance)
        try:
            yield progress
        except BaseException:
            console.print(
                f"[red]✗[/] {escape(name):<9} {escape(subject)}  [red]failed[/] after {_elapsed(start)}",
                highlight=False,
            )
            raise
    summary = SUMMARIES[name](progress.result) if name in SUMMARIES and progress.result is not None else ""
    console.print(
        f"[green]✓[/] {escape(name):<9} {escape(subject):<24} {escape(summary)}  [dim]{_elapsed(start)}[/]",
        highlight=False,
    )


@contextlib.contextmanager
def _progress(console: Console, label: str, steps: int | None) -> Iterator[Callable[[], None]]:
    """A live rich progress line on a terminal; otherwise a plain line every PLAIN_EVERY_S seconds."""
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = [
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            *([MofNCompleteColumn()] if steps else []),
        ]
        with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as live:
            job = live.add_task(escape(label), total=steps)
            yield lambda: live.advance(job)
        return
    done, stop, start = [0], threading.Event(), time.monotonic()

    def tick() -> None:
        while not stop.wait(PLAIN_EVERY_S):
            count = f" ({done[0]}/{steps} done)" if steps else ""
            console.print(f"  {escape(label)}: running{count}, {_elapsed(start)}", highlight=False)

    ticker = threading.Thread(target=tick, name=f"slmops-progress-{label}", daemon=True)
    ticker.start()
    try:
        yield lambda: done.__setitem__(0, done[0] + 1)
    finally:
        stop.set()
        ticker.join()


def _elapsed(start: float) -> str:
    seconds = time.monotonic() - start
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def skipped_profiles(bench_results: Iterable[dict[str, BenchReport]]) -> dict[str, str]:
    """The benchmark profiles skipped anywhere in ``bench_results`` (each ``{recipe: report}``), with their reason."""
    skipped: dict[str, str] = {}
    for results in bench_results:
        for report in results.values():
            for profile, reason in report.skipped().items():
                skipped.setdefault(profile, reason)
    return skipped


def warn_skipped_profiles(bench_results: Iterable[dict[str, BenchReport]]) -> None:
    """Warn once, for the whole build, about each benchmark profile that did not run (its reports record why)."""
    for profile, reason in skipped_profiles(bench_results).items():
        logger.warning("benchmark profile %s skipped: %s", profile, reason)


# -- what a build shows in the Prefect UI (flows.build publishes these as artifacts) ----------------------------
def _cell(value: Any) -> str:
    """A markdown table cell: numbers to 4 significant digits, lists joined, pipes and newlines escaped."""
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = "; ".join(_cell(v) for v in value) or "-"
    elif isinstance(value, dict):
        text = ", ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    elif hasattr(value, "model_dump"):
        text = _cell(value.model_dump(mode="json"))
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_none_"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def recommendations_markdown(decisions: Recommendations) -> str:
    """Every use case's decision: each field of the Decision (whatever fields it has), then its ranked candidates."""
    parts = ["# Recommendations"]
    for usecase, decision in decisions.usecases.items():
        fields = decision.model_dump(mode="json")
        tables = {k: v for k, v in fields.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)}
        parts.append(f"## {usecase}")
        parts.append(_markdown_table([{"field": k, "value": v} for k, v in fields.items() if k not in tables]))
        for name, rows in tables.items():
            parts.append(f"**{name}**\n\n{_markdown_table(rows)}")
    return "\n\n".join(parts) + "\n"


def gates_markdown(gates: dict[str, GateReport]) -> str:
    """The quality gate of every candidate of every built variant: passed, metrics, reasons."""
    rows = [
        {
            "variant": variant,
            "candidate": name,
            "passed": c.passed,
            "reference": report.reference,
            **{k: v for k, v in c.metrics.items()},
            "reasons": c.reasons,
        }
        for variant, report in gates.items()
        for name, c in report.candidates.items()
    ]
    return "# Quality gates\n\n" + _markdown_table(rows) + "\n"


def bench_rows(benched: dict[str, dict[str, BenchReport]]) -> list[dict[str, Any]]:
    """One row per benchmarked candidate: its headline numbers (the first device profile that ran)."""
    keys = ("ttft_ms", "decode_tok_s", "items_per_s", "load_s", "peak_rss_mb", "size_mb")
    rows = []
    for variant, reports in benched.items():
        for recipe, r in reports.items():
            values = r.model_dump()
            rows.append(
                {
                    "variant": variant,
                    "candidate": recipe,
                    "profile": r.headline_profile or "not run",
                    **{k: round(values[k], 3) if isinstance(values.get(k), float) else values.get(k) for k in keys},
                }
            )
    return rows
