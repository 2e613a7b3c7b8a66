"""The evaluate stage: gate every candidate of a variant against its unquantized reference."""

from __future__ import annotations

import logging
from pathlib import Path

from slmops.artifacts import read_manifest
from slmops.errors import GateError
from slmops.evaluate.gates import Gates
from slmops.results import CandidateGate, GateReport, write_result
from slmops.runtime.open import open_folder
from slmops.tasks import get_task

logger = logging.getLogger(__name__)


def evaluate(
    *, task: str, candidates: dict[str, Path], reference: str, gates: Gates, out: Path, threads: int | None = None
) -> GateReport:
    """Score each candidate folder (by recipe name) against ``candidates[reference]``; write and return the report.

    A candidate failing its gate is a result (``passed: false`` with reasons), not an error.
    Raises GateError when the reference is missing, ConfigError when gates.yaml has no gate for the task.
    """
    if reference not in candidates:
        raise GateError(f"reference candidate {reference!r} is missing; have {sorted(candidates)}")
    impl = get_task(task).impl()
    gate = gates.gate(task)
    outputs = {}
    for name, folder in candidates.items():
        model = open_folder(folder, threads=threads)
        outputs[name] = impl.outputs(model)
        model.unload()
    results = {}
    for name, folder in candidates.items():
        metrics = impl.metrics(outputs[name], outputs[reference], gate)
        reasons = gate.check(metrics)
        results[name] = CandidateGate(
            metrics=metrics, passed=not reasons, reasons=reasons, candidate_digest=read_manifest(folder).digest()
        )
        logger.info("gate %s: %s %s", name, "passed" if not reasons else "FAILED", "; ".join(reasons))
    report = GateReport(task=task, reference=reference, gates=gates.dump(), candidates=results)
    write_result(out, report)
    return report
