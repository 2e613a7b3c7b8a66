"""When a use-case alias may move: only for a win larger than the noise, never on a busy machine's numbers.

Benchmarks of identical candidates drift from build to build (a busy machine measured 110, 19 and
34 tok/s for one model), so the alias keeps its version (the incumbent) unless the challenger beats
it by more than the larger of the use case's ``margin`` and the spread of either one's repeats, and
neither number comes from a run flagged busy. An incumbent that is no longer eligible is replaced
at once. Every move is explained in one sentence, kept as tags in MLflow and read back by
:func:`move_history`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slmops import names
from slmops.runtime.ranking import OBJECTIVES, Candidate

UNITS = {"bench.decode_tok_s": "tok/s", "bench.ttft_ms": "ms", "bench.items_per_s": "items/s"}


@dataclass(frozen=True)
class Verdict:
    """Where the alias points after this pass (None: nowhere), whether that is a move, and why."""

    target: Candidate | None
    moved: bool
    reason: str


def _show(c: Candidate, metric: str) -> str:
    value = c.metrics.get(metric)
    shown = "unmeasured" if value is None else f"{value:.1f} {UNITS.get(metric, metric.rsplit('_', 1)[-1])}"
    return f"v{c.version} {c.label} ({shown}{', busy machine' if c.busy else ''})"


def gain(challenger: Candidate, incumbent: Candidate, objective: str) -> float:
    """Relative improvement of ``challenger`` over ``incumbent`` on the objective (positive: better)."""
    metric, higher = OBJECTIVES[objective]
    new, old = challenger.metrics[metric], incumbent.metrics[metric]
    if old <= 0:
        return float("inf") if (new > old) == higher else 0.0
    return (new - old) / old if higher else (old - new) / old


def decide(ranked: list[Candidate], *, incumbent: str | None, objective: str, margin: float) -> Verdict:
    """Keep or move an alias now on version ``incumbent`` (None: unset), given ``rank``'s output.

    It moves when the incumbent is gone or ineligible, or when the best eligible challenger beats
    it by more than ``max(margin, challenger's spread, incumbent's spread)`` and neither was
    measured on a busy machine.
    """
    metric, _ = OBJECTIVES[objective]
    eligible = [c for c in ranked if not c.rejected]
    current = next((c for c in ranked if c.version == incumbent), None)
    top = eligible[0] if eligible else None
    if top is None:
        if incumbent is None:
            return Verdict(None, False, "no eligible version, so no alias")
        was = _show(current, metric) if current else f"v{incumbent}"
        return Verdict(None, True, f"dropped from {was}: no version is eligible")
    if incumbent is None:
        return Verdict(top, True, f"set to {_show(top, metric)}: the alias was not set")
    if current is None:
        return Verdict(top, True, f"from v{incumbent} (no longer registered) to {_show(top, metric)}")
    if current.rejected:
        return Verdict(
            top,
            True,
            f"from {_show(current, metric)} to {_show(top, metric)}: the incumbent is no longer eligible "
            f"({'; '.join(current.rejected)})",
        )
    if top is current:
        return Verdict(current, False, f"kept {_show(current, metric)}: still the best eligible")
    won = gain(top, current, objective)
    noise = max(top.spread(metric), current.spread(metric))
    threshold, what = (margin, "margin") if margin >= noise else (noise, "repeat spread")
    versus = f"{_show(top, metric)} is {won:+.0%} over {_show(current, metric)}"
    if top.busy or current.busy:
        return Verdict(current, False, f"kept v{current.version}: {versus}, but a busy machine's number moves no alias")
    if won > threshold:
        return Verdict(
            top, True, f"from {_show(current, metric)} to {_show(top, metric)}: {won:+.0%} > {what} {threshold:.0%}"
        )
    return Verdict(current, False, f"kept v{current.version}: {versus}, within the {what} {threshold:.0%}")


def move_history(client: Any, experiment_id: str, *, limit: int = 200) -> list[dict[str, str]]:
    """Past alias moves, newest first, from the tags of the recommend runs (one row per moved alias)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{names.TAG_KIND}` = '{names.RUN_KIND_RECOMMEND}'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    rows = []
    for run in runs:
        when = datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        for key, reason in sorted(run.data.tags.items()):
            if key.startswith(names.TAG_ALIAS_MOVED_PREFIX):
                alias = key.removeprefix(names.TAG_ALIAS_MOVED_PREFIX)
                rows.append({"time": when, "alias": alias, "reason": reason, "run_id": run.info.run_id})
    return rows
