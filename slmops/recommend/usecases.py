"""Use cases and constraints (configs/usecases.yaml): what an app needs from a model."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slmops.errors import ConfigError

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
    if path is None:
        from slmops.settings import get_settings

        path = get_settings().config_dir / "usecases.yaml"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"use-case file {path} not found; set SLMOPS_CONFIG_DIR") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("usecases"), dict):
        raise ConfigError(f"{path}: expected a top-level 'usecases:' mapping of name -> use case")
    out = {}
    for name, raw in data["usecases"].items():
        try:
            out[name] = UseCase.model_validate({**(raw or {}), "name": name})
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "(entry)"
            raise ConfigError(f"{path}: use case {name!r}: {loc}: {err['msg']} (got {err.get('input')!r})") from None
    return out
