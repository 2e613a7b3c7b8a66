"""Pareto plots of the registered candidates: speed vs quality, marker area by peak memory."""

from __future__ import annotations

import os
from pathlib import Path

from slmops.artifacts import remove_stale_temps
from slmops.runtime.ranking import Candidate
from slmops.tasks import get_task


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


def plot_pareto(task: str, candidates: list[Candidate], out: Path) -> Path | None:
    """Write a PNG for ``task``'s candidates that have both axes measured; None when there is nothing to plot."""
    spec = get_task(task)
    speed_key, quality_key, higher = spec.speed_metric, spec.quality_metric, spec.quality_higher
    rows = [c for c in candidates if speed_key in c.metrics and quality_key in c.metrics]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(c.metrics[speed_key], c.metrics[quality_key]) for c in rows]
    front = set(pareto_front(points, quality_higher=higher))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, (c, (s, q)) in enumerate(zip(rows, points, strict=False)):
        rss = c.metrics.get("bench.peak_rss_mb", 100.0)
        ax.scatter(
            s,
            q,
            s=max(rss, 20) / 2,
            alpha=0.6,
            color="tab:green" if not c.rejected else "tab:gray",
            edgecolors="black" if i in front else "none",
            linewidths=1.5,
        )
        ax.annotate(f"{c.label}\n{rss:.0f} MB", (s, q), textcoords="offset points", xytext=(6, 4), fontsize=7)
    ax.set_xlabel(speed_key)
    ax.set_ylabel(quality_key + (" (higher is better)" if higher else " (lower is better)"))
    ax.set_title(f"{task}: speed vs quality (area = peak RSS; black edge = Pareto front; grey = not eligible)")
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    remove_stale_temps(out)  # a plot a killed build was writing
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # beside the plots DVC shows, never picked up as one
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(out)
    return out
