"""Pareto plots per task: speed vs quality of every candidate, the chosen one marked, and why each other one lost.

The points are the registered versions (as each use case of the task ranked them) plus the candidates
of the last build that failed their quality gate, which are never registered (their numbers come from
the gate and benchmark results under the artifacts folder). Each point gets a status and a reason:

- ``chosen``: an alias (use case) points at it;
- ``eligible``: it meets a use case's constraints but another one was chosen;
- ``excluded``: it meets no use case's constraints (the reasons say which and why);
- ``failed-gate``: it failed its quality gate, so it was never registered.

:func:`write_pareto` writes the rows for ``dvc plots`` (``pareto.json``, drawn by the template
``.dvc/plots/pareto.json``) and a PNG per task.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmops import names
from slmops.artifacts import remove_stale_temps, write_json_atomic
from slmops.errors import MissingResultError
from slmops.runtime.ranking import Candidate
from slmops.tasks import get_task

if TYPE_CHECKING:
    from slmops.recommend.usecases import UseCase
    from slmops.results import Decision

logger = logging.getLogger(__name__)

DATA_NAME = "pareto.json"
# status -> (colour, matplotlib marker, what it means); the Vega-Lite template uses the same colours
STATUSES: dict[str, tuple[str, str, str]] = {
    "chosen": ("#d62728", "*", "chosen (an alias points at it)"),
    "eligible": ("#2ca02c", "o", "eligible, not the best"),
    "excluded": ("#ff7f0e", "s", "excluded by a use case's constraints"),
    "failed-gate": ("#9e9e9e", "X", "failed its quality gate (not registered)"),
}


@dataclass(frozen=True)
class ParetoPoint:
    """One row of the plot data."""

    task: str
    candidate: str
    version: str | None
    speed: float
    quality: float
    peak_rss_mb: float | None
    status: str
    reason: str
    front: bool
    panel: str
    label: str


def pareto_front(points: list[tuple[float, float]], *, quality_higher: bool) -> list[int]:
    """Indices of points no other point beats on both speed (higher) and quality."""
    front = []
    for i, (s, q) in enumerate(points):
        dominated = any(
            (s2 >= s and (q2 >= q if quality_higher else q2 <= q)) and (s2, q2) != (s, q) for s2, q2 in points
        )
        if not dominated:
            front.append(i)
    return front


def failed_gate_candidates(artifacts: Path, task: str) -> list[Candidate]:
    """The task's candidates whose last gate failed, with their benchmark numbers, read from ``artifacts``.

    A variant without a readable gate report, or a candidate without a benchmark result, is left out.
    """
    from slmops.results import BenchReport, GateReport, read_result

    spec = get_task(task)
    speed, quality = spec.speed_metric.removeprefix("bench."), spec.quality_metric.removeprefix("quality.")
    out = []
    for path in sorted((Path(artifacts) / "gates").glob("*.json")):
        variant = path.stem
        try:
            gate = read_result(path, GateReport, variant=variant)
        except MissingResultError as exc:
            logger.debug("not plotted: %s", exc)
            continue
        if gate.task != task:
            continue
        for recipe, result in gate.candidates.items():
            if result.passed:
                continue
            try:
                bench = read_result(Path(artifacts) / "bench" / variant / f"{recipe}.json", BenchReport)
            except MissingResultError as exc:
                logger.debug("not plotted: %s", exc)
                continue
            metrics = {spec.speed_metric: getattr(bench, speed), spec.quality_metric: result.metrics.get(quality)}
            if bench.peak_rss_mb is not None:
                metrics["bench.peak_rss_mb"] = bench.peak_rss_mb
            tags = {names.TAG_VARIANT: variant, names.TAG_RECIPE: recipe, names.TAG_GATE: "failed"}
            reasons = ["failed its quality gate: " + "; ".join(result.reasons)]
            out.append(
                Candidate(
                    spec.model_name,
                    "",
                    tags,
                    {k: float(v) for k, v in metrics.items() if v is not None},
                    reasons,
                )
            )
    return out


def pareto_points(
    task: str,
    rankings: dict[str, list[Candidate]],
    chosen: dict[str, str | None],
    failed: list[Candidate],
) -> list[ParetoPoint]:
    """The plot rows of ``task``: ``rankings`` maps each of its use cases to its ranked candidates,
    ``chosen`` each use case to the URI its alias points at (or None). Points lacking an axis are left out."""
    spec = get_task(task)
    by_version: dict[str, tuple[Candidate, dict[str, list[str]]]] = {}
    for usecase, ranked in rankings.items():
        for c in ranked:
            first, verdicts = by_version.setdefault(c.version, (c, {}))
            verdicts[usecase] = list(c.rejected)
    rows: list[tuple[Candidate, str, str]] = []
    for c, verdicts in by_version.values():
        rows.append((c, *_status(c, verdicts, chosen)))
    rows += [(c, "failed-gate", c.rejected[0]) for c in failed]
    rows = [r for r in rows if spec.speed_metric in r[0].metrics and spec.quality_metric in r[0].metrics]
    registered = [i for i, r in enumerate(rows) if r[1] != "failed-gate"]
    coords = [(rows[i][0].metrics[spec.speed_metric], rows[i][0].metrics[spec.quality_metric]) for i in registered]
    front = {registered[i] for i in pareto_front(coords, quality_higher=spec.quality_higher)}
    better = "higher" if spec.quality_higher else "lower"
    panel = f"{task}: x = {spec.speed_metric}, y = {spec.quality_metric} ({better} is better)"
    points = []
    for i, (c, status, reason) in enumerate(rows):
        version = c.version or None
        name = c.label + (f" v{version}" if version else "")
        short = reason.replace("failed its quality gate", "gate failed", 1)
        short = short if len(short) <= 64 else short[:63] + "…"
        points.append(
            ParetoPoint(
                task=task,
                candidate=c.label,
                version=version,
                speed=c.metrics[spec.speed_metric],
                quality=c.metrics[spec.quality_metric],
                peak_rss_mb=c.metrics.get("bench.peak_rss_mb"),
                status=status,
                reason=reason,
                front=i in front,
                panel=panel,
                label=name if status in ("chosen", "eligible") else f"{name}: {short}",
            )
        )
    return points


def _status(c: Candidate, verdicts: dict[str, list[str]], chosen: dict[str, str | None]) -> tuple[str, str]:
    """(status, reason) of a registered version from each use case's verdict on it."""
    if c.tags.get(names.TAG_GATE) != "passed":  # registered by an slmops that registered failed candidates too
        return "failed-gate", "failed its quality gate"
    by = [uc for uc in verdicts if chosen.get(uc) == c.uri]
    if by:
        return "chosen", "chosen for " + ", ".join(by)
    eligible = [uc for uc, rejected in verdicts.items() if not rejected]
    if eligible:
        return "eligible", "eligible for " + ", ".join(eligible) + ", where another version was chosen"
    distinct = {tuple(r) for r in verdicts.values()}
    if len(distinct) == 1:  # every use case rejects it for the same reasons: say them once
        return "excluded", "; ".join(next(iter(distinct)))
    return "excluded", "; ".join(f"{uc}: {', '.join(rejected)}" for uc, rejected in verdicts.items())


def write_pareto(
    usecases: dict[str, UseCase],
    rankings: dict[str, list[Candidate]],
    decisions: dict[str, Decision],
    *,
    plots_dir: Path,
    artifacts: Path,
) -> dict[str, Path]:
    """Write ``plots_dir/pareto.json`` (every task's rows, for ``dvc plots``) and a PNG per task.

    ``rankings`` and ``decisions`` are keyed by use case; the failed-gate candidates are read from
    ``artifacts``. Returns task -> PNG for the tasks with something to plot.
    """
    tasks: dict[str, dict[str, list[Candidate]]] = {}
    for name, uc in usecases.items():
        if name in rankings:
            tasks.setdefault(uc.task, {})[name] = rankings[name]
    chosen = {name: d.chosen for name, d in decisions.items()}
    rows: list[dict[str, Any]] = []
    plots = {}
    for task, ranked in tasks.items():
        points = pareto_points(task, ranked, chosen, failed_gate_candidates(artifacts, task))
        rows += [asdict(p) for p in points]
        path = plot_pareto(task, points, plots_dir / f"pareto-{task}.png")
        if path is not None:
            plots[task] = path
    write_json_atomic(plots_dir / DATA_NAME, rows)
    return plots


def plot_pareto(task: str, points: list[ParetoPoint], out: Path) -> Path | None:
    """Write a PNG of ``task``'s points: colour and marker by status, area by peak RSS, the front dashed.

    Returns None (and writes nothing) when there is no point to plot.
    """
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = get_task(task)
    # numbered points, their labels (with the reason a point lost, which can be long) listed under the axes:
    # written beside the points they squeezed the axes into a strip and overlapped one another
    order = sorted(points, key=lambda p: (-p.speed, p.candidate))
    legend_lines = len(order) + 1
    fig = plt.figure(figsize=(9, 4.6 + 0.17 * legend_lines), dpi=120)
    grid = fig.add_gridspec(2, 1, height_ratios=[4.6, 0.17 * legend_lines + 0.1])
    ax, notes = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    front = sorted((p for p in points if p.front), key=lambda p: p.speed)
    if len(front) > 1:
        ax.plot([p.speed for p in front], [p.quality for p in front], "--", color="black", lw=0.8, label="Pareto front")
    for status, (colour, marker, meaning) in STATUSES.items():
        group = [p for p in points if p.status == status]
        if not group:
            continue
        ax.scatter(
            [p.speed for p in group],
            [p.quality for p in group],
            s=[max(p.peak_rss_mb or 100.0, 40) / (1.0 if status == "chosen" else 2.5) for p in group],
            c=colour,
            marker=marker,
            alpha=0.85,
            edgecolors="black",
            linewidths=0.6,
            label=meaning,
            zorder=3,
        )
    lines = []
    for number, p in enumerate(order, start=1):
        grey = p.status not in ("chosen", "eligible")
        ax.annotate(
            str(number),
            (p.speed, p.quality),
            textcoords="offset points",
            xytext=(7, 5),
            fontsize=8,
            weight="bold",
            color="dimgray" if grey else "black",
        )
        rss = f", {p.peak_rss_mb:.0f} MB" if p.peak_rss_mb is not None else ""
        lines.append(f"{number}. {p.label}{rss}")
    ax.set_xlabel(f"{spec.speed_metric} (higher is better)")
    ax.set_ylabel(spec.quality_metric + (" (higher is better)" if spec.quality_higher else " (lower is better)"))
    ax.set_title(f"{task}: speed vs quality (area = peak RSS)", fontsize=10)
    ax.ticklabel_format(useOffset=False)  # quality near 1: plain values, not an offset above the axis
    ax.margins(x=0.12, y=0.12)  # room for the numbers beside the outermost points
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", markerscale=0.6)
    notes.axis("off")
    width = 150  # characters a line of the list keeps at this size; the JSON rows keep the whole reason
    notes.text(
        0.0,
        1.0,
        "\n".join(line if len(line) <= width else line[: width - 1] + "…" for line in lines),
        fontsize=7,
        va="top",
        ha="left",
        family="monospace",
        transform=notes.transAxes,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    remove_stale_temps(out)  # a plot a killed build was writing
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # beside the plots DVC shows, never picked up as one
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(out)
    return out
