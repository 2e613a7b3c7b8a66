"""Every environment variable slmops reads, in one place.

Values come from ``SLMOPS_*`` variables (and the Hugging Face variables that
huggingface_hub itself honours, so one ``HF_ENDPOINT`` steers both). Nothing is
read or created at import time: call :func:`get_settings`.
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from slmops.errors import ConfigError, RecordError
from slmops.records import Record, spec


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@dataclasses.dataclass(frozen=True, kw_only=True, init=False)
class Settings(Record):
    """Process-wide settings. Build with :func:`get_settings`.

    Keyword arguments win; every other field is read from its environment variables (:func:`env_vars`, first
    set one wins, names matched case-insensitively), as pydantic-settings' ``BaseSettings`` would. Written here
    because ``pydantic_settings`` was the heaviest import of the runtime loader: 16.3 MB of resident memory and
    53-70 ms of ``slmops.load``'s cold start (it pulls in asyncio and ssl), measured 2026-12-01; and a record
    rather than a pydantic model for the reasons in :mod:`slmops.records`.
    """

    def __init__(self, **values: Any) -> None:
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"unknown setting {', '.join(map(repr, unknown))}; valid ones: {', '.join(fields)}")
        environ = {key.upper(): value for key, value in os.environ.items()}
        source: dict[str, str] = {}  # field -> the variable its value came from
        for name, f in fields.items():
            if name not in values:
                var = next((v for v in env_vars(name) if v.upper() in environ), None)
                if var is not None:
                    values[name] = environ[var.upper()]
                    source[name] = var
                elif f.default_factory is not dataclasses.MISSING:
                    values[name] = f.default_factory()
                else:
                    values[name] = f.default
            object.__setattr__(self, name, values[name])
        try:
            self.__post_init__()
        except RecordError as exc:
            problems, unset = [], []
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else ""
                if field in source:
                    unset.append(source[field])
                problems.append(f"{source.get(field, field)}={error['input']!r}: {error['msg']}")
            hint = f"; fix or unset {', '.join(unset)}" if unset else ""
            raise ConfigError("invalid setting " + "; ".join(problems) + hint) from None

    config_dir: Path = spec(
        default=Path("configs"), description="Folder holding catalog.yaml, usecases.yaml, recipes.yaml, pipeline.yaml."
    )
    artifacts_dir: Path = spec(default=Path("artifacts"), description="Where pipeline stages write their outputs.")
    tracking_uri: str | None = spec(
        default=None,
        env=("SLMOPS_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="MLflow tracking/registry URI. Default: a SQLite store in mlruns/ beside its artifacts.",
    )
    tracking_token: str | None = spec(
        default=None,
        env=("SLMOPS_TRACKING_TOKEN", "MLFLOW_TRACKING_TOKEN"),
        repr=False,
        description="Bearer token for an http(s) tracking server (read by the runtime's light registry reader).",
    )
    tracking_username: str | None = spec(
        default=None,
        env=("MLFLOW_TRACKING_USERNAME",),
        description="Basic-auth user for an http(s) tracking server (with MLFLOW_TRACKING_PASSWORD).",
    )
    tracking_password: str | None = spec(
        default=None,
        env=("MLFLOW_TRACKING_PASSWORD",),
        repr=False,
        description="Basic-auth password for an http(s) tracking server.",
    )
    mlruns_dir: Path = spec(default=Path("mlruns"), description="Local MLflow store used when no tracking URI is set.")
    cache_dir: Path = spec(
        default_factory=lambda: Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "slmops",
        description="Runtime loader cache for downloaded model artifacts; default: $XDG_CACHE_HOME/slmops.",
    )
    hf_endpoint: str | None = spec(
        default=None,
        env=("SLMOPS_HF_ENDPOINT", "HF_ENDPOINT"),
        description="Hugging Face Hub (or mirror) URL; default https://huggingface.co.",
    )
    hf_offline: bool = spec(
        default=False,
        env=("SLMOPS_OFFLINE", "HF_HUB_OFFLINE"),
        description="Fetch from the local Hub cache only, never the network.",
    )
    hf_token: str | None = spec(
        default=None,
        env=("SLMOPS_HF_TOKEN", "HF_TOKEN"),
        repr=False,
        description="Hub token for gated or private repos.",
    )
    hf_cache_dir: Path | None = spec(
        default=None,
        env=("SLMOPS_HF_CACHE_DIR", "HF_HUB_CACHE"),
        description="huggingface_hub cache; default: $HF_HOME/hub.",
    )
    hf_home: Path = spec(
        default_factory=lambda: Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface",
        env=("SLMOPS_HF_HOME", "HF_HOME"),
        description="huggingface_hub's home folder; default: $XDG_CACHE_HOME/huggingface.",
    )
    hub_timeout_s: float = spec(default=10.0, gt=0, description="Seconds without data before a Hub request times out.")
    hub_retries: int = spec(default=5, ge=0, description="Retries per file after transient Hub errors.")
    hub_backoff_s: float = spec(default=1.0, ge=0, description="First retry delay; doubles per retry (max 30 s).")
    threads: int = spec(
        default_factory=default_threads,
        ge=1,
        description="Intra-op threads for onnxruntime; default: the CPU count, at most 8.",
    )
    device: Literal["cpu", "cuda"] = spec(default="cpu", description="Device the runtime loads models on.")
    huge_pages: bool = spec(
        default=True,
        description="After opening a model on CPU, move its prepacked weights onto 2 MB transparent huge pages "
        "(Linux 6.1+, THP not 'never'), in a thread started when the model's first run ends (beside that run it "
        "would stall it): fewer TLB misses, SmolLM2 decode 8-10% faster once done (0.04-0.65 s); false keeps 4 KB "
        "pages.",
    )
    build_id: str | None = spec(
        default=None,
        description="Groups the MLflow runs of one build (tag slmops.build_id); default: the Prefect flow run id, "
        "else one id per process.",
    )
    build_lock_wait_s: float | None = spec(
        default=None,
        ge=0,
        description="Seconds a build (the flow, or a pipeline stage command under `dvc repro`) waits for another "
        "build's lock on the artifacts folder before it fails; default: until that build ends; 0: fail at once.",
    )
    build_lock_owner: int | None = spec(
        default=None,
        description="Set by slmops, not by hand: the pid of the build holding the lock, for its child processes "
        "(their stages then run inside that build instead of waiting for it).",
    )
    progress_every_s: float = spec(
        default=10.0,
        gt=0,
        description="Seconds between progress lines of a long download (`slmops fetch`) when stderr is not a "
        "terminal; a terminal shows huggingface_hub's progress bars instead.",
    )
    log_level: str = spec(default="WARNING", description="Level of slmops' own loggers in the CLI (-v: INFO).")
    api_key: str | None = spec(
        default=None,
        repr=False,
        description="`slmops serve`: API key every /v1/* request must send as `Authorization: Bearer <key>`.",
    )
    serve_max_body_bytes: int = spec(
        default=2**20, ge=1, description="`slmops serve`: largest request body in bytes (413 above it)."
    )
    serve_max_prompt_chars: int = spec(
        default=100_000,
        ge=1,
        description="`slmops serve`: most characters in one prompt or conversation, checked before tokenizing.",
    )
    serve_max_items: int = spec(
        default=256, ge=1, description="`slmops serve`: most embedding inputs, rerank documents or completion prompts."
    )
    alias_poll_s: float = spec(
        default=30.0,
        ge=0,
        description="Seconds between re-resolving the served aliases (`slmops serve`, AliasWatcher) to hot-swap "
        "versions that moved; 0: only on POST /admin/reload or SIGHUP.",
    )

    serve_max_batch: int = spec(
        default=16,
        ge=1,
        description="`slmops serve`: most requests one model decodes together, one graph call per step.",
    )
    serve_max_queue: int = spec(
        default=64,
        ge=0,
        description="`slmops serve`: most generation requests waiting for a batch slot, per model (429 above it).",
    )
    serve_request_timeout_s: float = spec(
        default=300.0, gt=0, description="`slmops serve`: time limit of one request, queueing included (504 after it)."
    )

    stack_dir: Path = spec(
        default=Path(".slmops/stack"),
        description="`slmops stack`: folder of the local services' state, logs, PostgreSQL data and MLflow artifacts.",
    )
    stack_timeout_s: float = spec(
        default=180.0,
        gt=0,
        description="`slmops stack up`: seconds each service may take to answer its health check.",
    )

    @classmethod
    def _before(cls, values: dict[str, Any]) -> dict[str, Any]:
        if isinstance(values["log_level"], str):
            values["log_level"] = values["log_level"].upper()
        return values

    def resolved_hf_cache(self) -> Path:
        """The Hub cache, read here rather than from huggingface_hub.constants (fixed when it was imported)."""
        return self.hf_cache_dir or self.hf_home / "hub"

    def resolved_tracking_uri(self) -> str:
        """The MLflow URI to use: the configured one, or SQLite under ``mlruns_dir``."""
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(self.mlruns_dir / 'mlflow.db').resolve()}"

    def resolved_artifact_root(self) -> str:
        """Default artifact location for new experiments in the local store."""
        return (self.mlruns_dir / "artifacts").resolve().as_uri()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process (tests clear the cache)."""
    return Settings()


def env_vars(name: str) -> list[str]:
    """The environment variables that set the field ``name``, first one winning."""
    env = Settings.__dataclass_fields__[name].metadata["env"]
    return list(env) if env else [f"SLMOPS_{name.upper()}"]


def settings_markdown() -> str:
    """The README's settings table, generated from the fields above (a test keeps the README equal to it)."""
    lines = ["| variable | default | what it sets |", "|---|---|---|"]
    for field in dataclasses.fields(Settings):
        if field.default_factory is not dataclasses.MISSING:
            default = "see right"
        else:
            default = "unset" if field.default is None else f"`{field.default}`"
        names = " or ".join(f"`{v}`" for v in env_vars(field.name))
        lines.append(f"| {names} | {default} | {field.metadata['description']} |")
    return "\n".join(lines)
