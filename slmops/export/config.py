"""Export validation tolerances (the ``export_validation:`` section of configs/pipeline.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from slmops.catalog.schema import Task


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
    """Tolerances of the export check against PyTorch, per task (``default`` for tasks not listed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Tolerance = Field(default_factory=Tolerance)
    tasks: dict[Task, Tolerance] = Field(
        default_factory=lambda: {"causal-lm": Tolerance(atol=1e-4, rtol=1e-3)}
    )

    def tolerance(self, task: str) -> Tolerance:
        return self.tasks.get(task, self.default)  # type: ignore[call-overload]
