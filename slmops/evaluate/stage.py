"""The evaluate stage: gate every candidate of a variant against its unquantized reference."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from slmops.artifacts import read_manifest, write_json_atomic
from slmops.errors import GateError
from slmops.evaluate.gates import Gates
from slmops.evaluate.metrics import TASK_METRICS
from slmops.runtime.open import open_folder

logger = logging.getLogger(__name__)


def evaluate(
    *, task: str, candidates: dict[str, Path], reference: str, gates: Gates, out: Path, threads: int | None = None
) -> dict[str, Any]:
    """Score each candidate folder (by recipe name) against ``candidates[reference]``; write and return the results.

    A candidate failing its gate is a result (``passed: false`` with reasons), not an error.
    Raises GateError when the reference is missing or the task has no metrics.
    """
    if reference not in candidates:
        raise GateError(f"reference candidate {reference!r} is missing; have {sorted(candidates)}")
    try:
        outputs_of, metrics_of = TASK_METRICS[task]
    except KeyError:
        raise GateError(f"no quality metrics for task {task!r}; supported: {', '.join(TASK_METRICS)}") from None
    outputs = {}
    for name, folder in candidates.items():
        model = open_folder(folder, threads=threads)
        outputs[name] = outputs_of(model)
        del model
    results: dict[str, Any] = {}
    for name, folder in candidates.items():
        metrics = metrics_of(outputs[name], outputs[reference])
        reasons = gates.check(task, metrics)
        results[name] = {
            "metrics": metrics,
            "passed": not reasons,
            "reasons": reasons,
            "candidate_digest": read_manifest(folder).digest(),
        }
        logger.info("gate %s: %s %s", name, "passed" if not reasons else "FAILED", "; ".join(reasons))
    report = {"task": task, "reference": reference, "gates": gates.model_dump(by_alias=True), "candidates": results}
    write_json_atomic(out, report)
    return report
