"""Loading states a model goes through, reported to an optional callback (as in the seed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class LoadingState(str, Enum):
    NOT_LOADED = "not_loaded"
    DOWNLOADING = "downloading"
    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"


@dataclass(frozen=True)
class LoadingEvent:
    """One state change; ``progress`` in [0, 1] while downloading, ``detail`` the reason on failure."""

    state: LoadingState
    target: str
    progress: float | None = None
    detail: str | None = None


StateCallback = Callable[[LoadingEvent], None]
