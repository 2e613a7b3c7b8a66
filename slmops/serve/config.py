"""What ``slmops serve`` is started with: bind host, API key, CORS origins, trusted hosts, limits, named folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slmops.settings import Settings, get_settings

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class ServeConfig(BaseModel):
    """The server's options; :meth:`from_settings` fills the unset ones from :mod:`slmops.settings`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="Address the server binds to (loopback unless told).")
    api_key: str | None = Field(default=None, repr=False, description="Bearer token required on /v1/*.")
    cors_origins: tuple[str, ...] = Field(default=(), description="Browser origins allowed by CORS; none: CORS off.")
    allowed_hosts: tuple[str, ...] = Field(
        default=(), description="Host headers answered besides localhost, 127.0.0.1, ::1 and the bind host; '*': any."
    )
    max_body_bytes: int = Field(default=2**20, ge=1)
    max_prompt_chars: int = Field(default=100_000, ge=1)
    max_items: int = Field(default=256, ge=1)
    alias_poll_s: float = Field(default=30.0, ge=0, description="Seconds between alias re-resolves; 0: on reload only.")
    max_batch: int = Field(default=16, ge=1, description="Requests one model decodes together.")
    max_queue: int = Field(default=64, ge=0, description="Requests waiting for a batch slot, per model (429 above).")
    request_timeout_s: float = Field(default=300.0, gt=0, description="Time limit of one request, queueing included.")
    local_models: dict[str, Path] = Field(
        default_factory=dict, description="Artifact folders the operator named at start-up, by served name."
    )

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **options: Any) -> ServeConfig:
        """Options given here win; the API key and the limits default to the settings."""
        settings = settings or get_settings()
        defaults = {
            "api_key": settings.api_key,
            "max_body_bytes": settings.serve_max_body_bytes,
            "max_prompt_chars": settings.serve_max_prompt_chars,
            "max_items": settings.serve_max_items,
            "alias_poll_s": settings.alias_poll_s,
            "max_batch": settings.serve_max_batch,
            "max_queue": settings.serve_max_queue,
            "request_timeout_s": settings.serve_request_timeout_s,
        }
        return cls(**{**defaults, **{k: v for k, v in options.items() if v is not None}})

    def trusted_hosts(self) -> frozenset[str] | None:
        """Host names (no port, no brackets) the server answers to; None when any host is allowed."""
        if "*" in self.allowed_hosts:
            return None
        bind = () if self.host in ("0.0.0.0", "::", "") else (self.host,)
        return frozenset(h.strip("[]").lower() for h in (*LOOPBACK_HOSTS, *bind, *self.allowed_hosts))
