"""The recommend stage: pick the best eligible version per use case and point the use-case alias at it."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from slmops import names
from slmops.errors import NoEligibleModelError
from slmops.recommend.pareto import write_pareto
from slmops.recommend.usecases import UseCase
from slmops.register.store import ensure_experiment
from slmops.results import Decision, RankedRow, Recommendations
from slmops.runtime.ranking import OBJECTIVES, Candidate, best, rank, registered_candidates
from slmops.runtime.registry import connect
from slmops.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def recommend(
    usecases: dict[str, UseCase], *, settings: Settings | None = None, plots_dir: Path | None = None
) -> Recommendations:
    """For each use case set the alias ``<use case>`` on the winning version; return the decisions and reasons.

    A use case with no eligible model keeps no alias and is reported with the reasons. The
    decisions and a Pareto plot per task go to an MLflow run named ``recommend`` (and, with
    ``plots_dir``, to PNG files there, beside the plot data ``dvc plots`` draws).
    """
    settings = settings or get_settings()
    client = connect(settings)
    decisions: dict[str, Decision] = {}
    rankings: dict[str, list[Candidate]] = {}  # use case -> its ranking, for the Pareto plots
    for name, uc in usecases.items():
        candidates = registered_candidates(client, uc.task)
        ranked = rank(candidates, uc, uc.objective)
        rankings[name] = ranked
        metric = OBJECTIVES[uc.objective][0]
        table = [_row(c, metric) for c in ranked]
        try:
            winner = best(candidates, uc, uc.objective, what=f"use case {name!r}")
        except NoEligibleModelError as exc:
            _drop_alias(client, candidates, name)
            decisions[name] = Decision(chosen=None, why=str(exc), candidates=table)
            logger.info(
                "%s", exc
            )  # a result, not a fault: the decision carries it (the build's line and table show it)
            continue
        client.set_registered_model_alias(winner.model_name, name, winner.version)
        why = (
            f"{winner.label} (v{winner.version}) has the best {metric} = {winner.metrics[metric]:.1f} "
            f"among {sum(not c.rejected for c in ranked)} eligible of {len(ranked)} registered {uc.task} versions"
        )
        decisions[name] = Decision(
            chosen=winner.uri, alias_uri=f"models:/{winner.model_name}@{name}", why=why, candidates=table
        )
    result = Recommendations(usecases=decisions)
    plots: dict[str, Path] = {}
    if plots_dir is not None:
        plots = write_pareto(usecases, rankings, decisions, plots_dir=plots_dir, artifacts=settings.artifacts_dir)
    _log_summary(client, settings, result, plots)
    return result


def _log_summary(client: Any, settings: Settings, decisions: Recommendations, plots: dict[str, Path]) -> None:
    """One MLflow run per recommendation pass, holding the decisions and the Pareto plots."""
    import mlflow

    with mlflow.start_run(experiment_id=ensure_experiment(client, settings), run_name="recommend"):
        mlflow.set_tag(names.TAG_KIND, names.RUN_KIND_RECOMMEND)
        mlflow.log_dict(decisions.model_dump(mode="json"), names.RECOMMEND_ARTIFACT)
        for path in plots.values():
            mlflow.log_artifact(str(path), artifact_path="plots")


def _row(c: Candidate, metric: str) -> RankedRow:
    return RankedRow(
        candidate=c.label,
        version=c.version,
        metric=metric,
        value=c.metrics.get(metric),
        eligible=not c.rejected,
        rejected=c.rejected,
    )


def _drop_alias(client: Any, candidates: list[Candidate], alias: str) -> None:
    from mlflow.exceptions import MlflowException

    for model_name in {c.model_name for c in candidates}:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model_alias(model_name, alias)
