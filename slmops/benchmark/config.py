"""Benchmark options (the ``benchmark:`` section of configs/pipeline.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BenchmarkConfig(BaseModel):
    """How each candidate is measured in its own subprocess."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_tokens: int = Field(default=128, ge=1, description="Decoder prompt length for TTFT and decode.")
    new_tokens: int = Field(default=64, ge=2, description="Tokens generated per decode run.")
    warmup: int = Field(default=1, ge=0)
    repeats: int = Field(default=3, ge=1)
    batch_size: int = Field(default=32, ge=1, description="Encoder batch size for items/s.")
    items: int = Field(default=256, ge=1, description="Encoder items per timed run.")
    threads: int = Field(default=2, ge=1, description="onnxruntime intra-op threads.")
    timeout_s: float = Field(default=900, gt=0)
