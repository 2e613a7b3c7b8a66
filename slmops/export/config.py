"""Export validation tolerances (the ``export_validation:`` section of configs/pipeline.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slmops.tasks import TASKS, get_task


class Tolerance(BaseModel):
    """An output passes when max |onnx - torch| <= atol + rtol * max |torch|.

    The relative part scales with the output's magnitude, as fp32 rounding does. Measured on the
    fixed inputs: SmolLM2-135M's genai graph 8.5e-5 on logits up to |30.6| (optimum's own check saw
    1.7e-3 on its inputs), all-MiniLM-L6-v2 6.4e-6, the tiny test models below 1e-5.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    atol: float = Field(default=1e-4, gt=0.0)
    rtol: float = Field(default=0.0, ge=0.0)

    def limit(self, reference_max_abs: float) -> float:
        return self.atol + self.rtol * reference_max_abs


class ValidationConfig(BaseModel):
    """Tolerances of the export check against PyTorch per task; a task not listed gets its table default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Tolerance | None = Field(default=None, description="For tasks not listed; else the task table's default.")
    tasks: dict[str, Tolerance] = Field(default_factory=dict)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: dict[str, Tolerance]) -> dict[str, Tolerance]:
        bad = [task for task in value if task not in TASKS]
        if bad:
            raise ValueError(f"unknown tasks {bad}; use {', '.join(TASKS)}")
        return value

    def tolerance(self, task: str) -> Tolerance:
        if task in self.tasks:
            return self.tasks[task]
        if self.default is not None:
            return self.default
        atol, rtol = get_task(task).tolerance
        return Tolerance(atol=atol, rtol=rtol)
