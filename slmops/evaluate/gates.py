"""Quality-gate thresholds per task (configs/gates.yaml), each section validated by its task's ``Gate`` model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from slmops.configfile import config_path, read_yaml, validate
from slmops.errors import ConfigError
from slmops.taskdefs.base import GateModel
from slmops.tasks import TASKS, get_task


class Gates(BaseModel):
    """task -> its gate (the task module's ``Gate``). A task without a gate never yields an eligible candidate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gates: dict[str, GateModel]

    def gate(self, task: str) -> GateModel:
        """The gate of ``task``; raises ConfigError when gates.yaml has none."""
        try:
            return self.gates[task]
        except KeyError:
            raise ConfigError(f"gates.yaml has no gate for task {task!r}; add a '{task}:' section") from None

    def check(self, task: str, metrics: dict[str, float]) -> list[str]:
        """Reasons the metrics fail the task's gate (empty list: passed)."""
        if task not in self.gates:
            return [f"no quality gate is configured for task {task!r}"]
        return self.gates[task].check(metrics)

    def dump(self) -> dict[str, dict[str, Any]]:
        return {task: gate.model_dump() for task, gate in self.gates.items()}


def load_gates(path: Path | None = None) -> Gates:
    """Parse ``<config_dir>/gates.yaml``; raises ConfigError naming the task, the field and the fix."""
    path = path or config_path("gates.yaml")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of task -> thresholds; tasks: {', '.join(TASKS)}")
    gates = {}
    for task, raw in data.items():
        if task not in TASKS:
            raise ConfigError(f"{path}: {task}: unknown task; use one of {', '.join(TASKS)}")
        gates[task] = validate(raw, get_task(task).impl().Gate, path=path, loc=(task,))
    return Gates(gates=gates)
