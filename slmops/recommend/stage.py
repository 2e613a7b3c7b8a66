"""The recommend stage: pick the best eligible version per use case and point the use-case alias at it."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from slmops import names
from slmops.recommend.moves import decide
from slmops.recommend.pareto import write_pareto
from slmops.recommend.usecases import UseCase
from slmops.register.store import build_tags, ensure_experiment
from slmops.results import Decision, RankedRow, Recommendations
from slmops.runtime.ranking import OBJECTIVES, Candidate, no_fit_message, rank, registered_candidates
from slmops.runtime.registry import connect
from slmops.settings import Settings, get_settings
from slmops.tasks import get_task

logger = logging.getLogger(__name__)


def recommend(
    usecases: dict[str, UseCase], *, settings: Settings | None = None, plots_dir: Path | None = None
) -> Recommendations:
    """For each use case point the alias ``<use case>`` at the best version; return the decisions and reasons.

    An alias that is set moves only when its version is no longer eligible or a challenger beats it
    by more than the noise (:func:`slmops.recommend.moves.decide`); each move is tagged on the new
    version (``slmops.alias_moved.<alias>``) and logged. A use case with no eligible model keeps no
    alias and is reported with the reasons. The inputs, decisions and a Pareto plot per task go to
    an MLflow run named ``recommend`` (and, with ``plots_dir``, to PNG files there, beside the plot
    data ``dvc plots`` draws).
    """
    settings = settings or get_settings()
    client = connect(settings)
    decisions: dict[str, Decision] = {}
    inputs: dict[str, Any] = {}  # use case -> what its decision was made from (logged with the run)
    rankings: dict[str, list[Candidate]] = {}  # use case -> its ranking, for the Pareto plots
    for name, uc in usecases.items():
        candidates = registered_candidates(client, uc.task, profile=uc.profile)
        previous = _incumbent(client, uc.task, name)
        ranked = rank(candidates, uc, uc.objective, incumbent=previous)  # sparing a noisy incumbent
        rankings[name] = ranked
        decisions[name] = _apply(client, name, uc, ranked, previous)
        inputs[name] = _inputs(uc, previous, ranked)
    result = Recommendations(usecases=decisions)
    plots: dict[str, Path] = {}
    if plots_dir is not None:
        plots = write_pareto(usecases, rankings, decisions, plots_dir=plots_dir, artifacts=settings.artifacts_dir)
    _log_summary(client, settings, result, plots, inputs=inputs)
    return result


def history(*, settings: Settings | None = None, limit: int = 200) -> list[dict[str, str]]:
    """Past alias moves, newest first: time, alias, reason and the recommend run that made each."""
    from slmops.recommend.moves import move_history

    settings = settings or get_settings()
    client = connect(settings)
    experiment = client.get_experiment_by_name(names.EXPERIMENT)
    return [] if experiment is None else move_history(client, experiment.experiment_id, limit=limit)


def _apply(client: Any, name: str, uc: UseCase, ranked: list[Candidate], previous: str | None) -> Decision:
    """Keep or move the alias ``name`` (now on version ``previous``) as :func:`decide` rules; say why."""
    metric = OBJECTIVES[uc.objective][0]
    verdict = decide(ranked, incumbent=previous, objective=uc.objective, margin=uc.margin)
    model_name = get_task(uc.task).model_name
    reason = "; ".join([verdict.reason, *(n for c in ranked if c.version == previous for n in c.notes)])
    if verdict.moved:
        logger.info("alias %s of %s moved: %s", name, model_name, reason)
    decision = Decision(
        chosen=None,
        why="",
        candidates=[_row(c, metric) for c in ranked],
        previous=f"models:/{model_name}/{previous}" if previous else None,
        moved=verdict.moved,
        reason=reason,
    )
    winner = verdict.target
    if winner is None:
        _drop_alias(client, ranked, name)
        why = no_fit_message(ranked, uc, what=f"use case {name!r}")
        logger.info("%s", why)  # a result, not a fault: the decision carries it (the build's line and table show it)
        return decision.model_copy(update={"why": why})
    if verdict.moved:
        client.set_registered_model_alias(winner.model_name, name, winner.version)
        client.set_model_version_tag(winner.model_name, winner.version, names.alias_moved_tag(name), reason)
        deciding_run = winner.tags.get(names.TAG_LATEST_RUN)  # the run whose metrics were ranked just now
        if deciding_run:
            client.set_model_version_tag(winner.model_name, winner.version, names.alias_run_tag(name), deciding_run)
    if winner is next(c for c in ranked if not c.rejected):
        why = (
            f"{winner.label} (v{winner.version}) has the best {metric} = {winner.metrics[metric]:.1f} "
            f"among {sum(not c.rejected for c in ranked)} eligible of {len(ranked)} registered {uc.task} versions"
        )
    else:
        why = f"{winner.label} (v{winner.version}) keeps the alias: {verdict.reason}"
    return decision.model_copy(update={"chosen": winner.uri, "alias_uri": f"models:/{model_name}@{name}", "why": why})


def _incumbent(client: Any, task: str, alias: str) -> str | None:
    """The version the use-case alias points at now, or None when it is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(get_task(task).model_name, alias).version)
    except MlflowException:
        return None


def _inputs(uc: UseCase, previous: str | None, ranked: list[Candidate]) -> dict[str, Any]:
    """What a decision was made from: the use case, the incumbent and every candidate's numbers and verdict."""
    return {
        "usecase": uc.model_dump(mode="json"),
        "incumbent": previous,
        "candidates": [
            {
                "version": c.version,
                "candidate": c.label,
                "metrics": c.metrics,
                "busy": c.busy,
                "rejected": c.rejected,
                "notes": c.notes,
            }
            for c in ranked
        ],
    }


def _params(usecases: dict[str, Any]) -> dict[str, Any]:
    """``<use case>.<field>`` -> value: the constraints, objective, margin and incumbent of every use case."""
    out = {}
    for name, given in usecases.items():
        for key, value in given["usecase"].items():
            if key not in ("name", "description") and value not in (None, []):
                out[names.usecase_param(name, key)] = ",".join(value) if isinstance(value, list) else value
        out[names.usecase_param(name, "incumbent")] = given["incumbent"] or "none"
    return out


def _log_summary(
    client: Any,
    settings: Settings,
    decisions: Recommendations,
    plots: dict[str, Path],
    *,
    inputs: dict[str, Any],
) -> None:
    """One MLflow run per recommendation pass: its inputs as params and an artifact, the decisions as metrics,
    tags and an artifact, the Pareto plots, and the chosen models as its outputs.

    The outputs make MLflow 3's UI list the run with the runs: in a GenAI experiment it files a run
    without model outputs under "Evaluations".
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput

    metrics = {}
    for name, d in decisions.usecases.items():
        metrics[names.usecase_metric(name, "moved")] = float(d.moved)
        chosen_row = next((r for r in d.candidates if d.chosen and d.chosen.endswith(f"/{r.version}")), None)
        if chosen_row is not None and chosen_row.value is not None:
            metrics[names.usecase_metric(name, "value")] = chosen_row.value
    with mlflow.start_run(experiment_id=ensure_experiment(client, settings), run_name="recommend") as run:
        mlflow.set_tags(
            {
                names.TAG_KIND: names.RUN_KIND_RECOMMEND,
                **build_tags(settings),
                "mlflow.note.content": _note(decisions),
                **{names.alias_moved_tag(name): d.reason for name, d in decisions.usecases.items() if d.moved},
            }
        )
        mlflow.log_params(_params(inputs))
        mlflow.log_metrics(metrics)
        mlflow.log_dict(inputs, names.RECOMMEND_INPUTS_ARTIFACT)
        mlflow.log_dict(decisions.model_dump(mode="json"), names.RECOMMEND_ARTIFACT)
        for path in plots.values():
            mlflow.log_artifact(str(path), artifact_path="plots")
        chosen = sorted({d.chosen for d in decisions.usecases.values() if d.chosen})
        outputs = [m for m in (_model_id(client, uri) for uri in chosen) if m]
        if outputs:
            client.log_outputs(run.info.run_id, [LoggedModelOutput(model_id, step=0) for model_id in outputs])


def _model_id(client: Any, uri: str) -> str | None:
    """The MLflow 3 logged model behind ``models:/<name>/<version>`` (None for a version registered without one)."""
    model_name, version = uri.removeprefix("models:/").rsplit("/", 1)
    mv = client.get_model_version(model_name, version)
    if getattr(mv, "model_id", None):
        return str(mv.model_id)
    # a SQLite store leaves model_id empty; the source names the logged model (models:/m-<id>)
    source = str(mv.source or "")
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def _note(decisions: Recommendations) -> str:
    """The run's description: one line per use case, where its alias points and why."""
    lines = ["slmops recommend: where each use-case alias points and why.", ""]
    for name, d in decisions.usecases.items():
        state = "moved" if d.moved else "kept"
        lines.append(f"- **{name}** → {d.chosen or 'none'} ({state}): {d.reason}")
    return "\n".join(lines)


def _row(c: Candidate, metric: str) -> RankedRow:
    return RankedRow(
        candidate=c.label,
        version=c.version,
        metric=metric,
        value=c.metrics.get(metric),
        eligible=not c.rejected,
        rejected=c.rejected,
        spread=c.spread(metric) if names.spread_metric(metric) in c.metrics else None,
        busy=c.busy,
    )


def _drop_alias(client: Any, candidates: list[Candidate], alias: str) -> None:
    from mlflow.exceptions import MlflowException

    for model_name in {c.model_name for c in candidates}:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model_alias(model_name, alias)
