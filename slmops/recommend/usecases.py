"""Use cases and constraints (configs/usecases.yaml): what an app needs from a model."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from slmops.configfile import config_path, load_named

# objective -> (metric name in MLflow, higher is better)
OBJECTIVES: dict[str, tuple[str, bool]] = {
    "decode_speed": ("bench.decode_tok_s", True),
    "ttft": ("bench.ttft_ms", False),
    "throughput": ("bench.items_per_s", True),
    "memory": ("bench.peak_rss_mb", False),
    "size": ("bench.size_mb", False),
}


class Constraints(BaseModel):
    """What a model must satisfy to be chosen (every field optional but task)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Literal["causal-lm", "sentence-embedding", "cross-encoder", "fill-mask"]
    device: Literal["cpu", "cuda"] = "cpu"
    capabilities: list[str] = Field(default_factory=list, description="Catalog capabilities the variant must have.")
    max_memory_mb: float | None = Field(default=None, gt=0, description="Upper bound on measured peak RSS.")
    max_latency_ms: float | None = Field(default=None, gt=0, description="TTFT (decoders) or batch-1 p95 latency (encoders).")
    min_quality: float | None = Field(
        default=None, description="Decoders: max allowed ppl_ratio is 2 - min_quality; encoders: min cosine_mean."
    )


class UseCase(Constraints):
    """A named use case: constraints plus what to optimise among the models that meet them."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]*$")
    description: str = ""
    objective: Literal["decode_speed", "ttft", "throughput", "memory", "size"]


def load_usecases(path: Path | None = None) -> dict[str, UseCase]:
    """Use cases by name from ``<config_dir>/usecases.yaml``; raises ConfigError naming the use case and field."""
    return load_named(path or config_path("usecases.yaml"), UseCase, key="usecases", what="use case")
