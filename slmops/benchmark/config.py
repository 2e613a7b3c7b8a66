"""Benchmark options (``benchmark:`` in configs/pipeline.yaml) and device profiles (configs/devices.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slmops.configfile import load_named


class DeviceProfile(BaseModel):
    """Where a benchmark runs: a device (which selects the execution provider) and a thread count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]*$")
    device: Literal["cpu", "cuda"]
    threads: int = Field(default=2, ge=1, le=256, description="onnxruntime intra-op threads.")
    description: str = ""


class BenchmarkConfig(BaseModel):
    """How each candidate is measured, in a fresh subprocess per device profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: list[str] = Field(
        default_factory=lambda: ["cpu-2t"],
        min_length=1,
        description="Device profiles from configs/devices.yaml; the first that runs is the headline.",
    )
    prompt_tokens: list[int] = Field(
        default_factory=lambda: [32, 128, 512],
        min_length=1,
        description="Decoder prompt lengths for TTFT and decode speed.",
    )
    headline_prompt_tokens: int = Field(
        default=128, ge=1, description="The prompt length whose numbers are the headline metrics."
    )
    new_tokens: int = Field(default=64, ge=2, description="Tokens generated per decode run.")
    warmup: int = Field(default=1, ge=0)
    repeats: int = Field(default=3, ge=1)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32], min_length=1, description="Encoder batch sizes.")
    items: int = Field(default=256, ge=1, description="Encoder items per timed run.")
    sample_interval_ms: float = Field(default=5.0, gt=0, le=1000, description="RSS sampling period.")
    timeout_s: float = Field(default=900, gt=0)
    busy_load_per_core: float = Field(
        default=1.5,
        gt=0,
        description="Busy if the 1-minute load average before a run exceeds this many per CPU "
        "(a previous benchmark's own threads leave up to about 1 per core).",
    )
    busy_steal_pct: float = Field(
        default=10.0, ge=0, le=100, description="Busy if the hypervisor steals more than this % of CPU time."
    )
    busy_other_cpu_pct: float = Field(
        default=25.0, ge=0, le=100, description="Busy if other processes use more than this % of the CPU time."
    )
    busy_retries: int = Field(default=1, ge=0, le=10, description="Runs again after a busy run, this many times.")
    busy_wait_s: float = Field(default=30.0, ge=0, le=3600, description="Pause before running again after a busy run.")

    @model_validator(mode="after")
    def _consistent(self) -> BenchmarkConfig:
        if self.headline_prompt_tokens not in self.prompt_tokens:
            raise ValueError(
                f"headline_prompt_tokens={self.headline_prompt_tokens} must be one of "
                f"prompt_tokens {self.prompt_tokens}"
            )
        bad = [n for n in self.prompt_tokens + self.batch_sizes if n < 1]
        if bad:
            raise ValueError(f"prompt_tokens and batch_sizes must be positive, got {bad}")
        return self


def load_device_profiles(path: Path | None = None) -> dict[str, DeviceProfile]:
    """Profiles by name from configs/devices.yaml; raises ConfigError naming the profile and field."""
    return load_named("devices.yaml", DeviceProfile, key="profiles", path=path)
