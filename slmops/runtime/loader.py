"""``slmops.load``: resolve a use case, a ``models:/`` URI or constraints through MLflow and open the model.

Imports stay light: onnxruntime, tokenizers and numpy. The registry is read without mlflow
(:mod:`slmops.runtime.registry`); mlflow is imported only to download a version missing from
the cache, or to rank versions by constraints. Never torch, transformers or optimum.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmops.errors import MemoryBudgetError, SlmopsError, UsageError, describe_validation
from slmops.runtime.cache import fetch_version, verify_folder
from slmops.runtime.open import Model, open_folder
from slmops.runtime.session import DEVICE_PROVIDERS as DEVICES
from slmops.runtime.states import LoadingEvent, LoadingState, StateCallback
from slmops.settings import Settings, get_settings

if TYPE_CHECKING:
    from slmops.runtime.registry import VersionRef

logger = logging.getLogger(__name__)


def load(
    target: str | None = None,
    *,
    task: str | None = None,
    device: str | None = None,
    max_memory_mb: float | None = None,
    max_latency_ms: float | None = None,
    min_quality: float | None = None,
    capabilities: list[str] | None = None,
    on_state: StateCallback | None = None,
    settings: Settings | None = None,
) -> Model:
    """Open a registered model for serving.

    ``target`` is a use-case name (an alias set by ``slmops recommend``, e.g. ``"chat-cpu"``),
    a ``models:/name@alias`` or ``models:/name/version`` URI, or a local artifact folder.
    Without ``target``, the best registered version meeting the constraints is chosen
    (``task`` required). Raises RegistryError / NoEligibleModelError when nothing
    resolves, IntegrityError when a file does not match the manifest, MemoryBudgetError
    when the model would not fit ``max_memory_mb``.
    """
    return locate(
        target,
        task=task,
        device=device,
        max_memory_mb=max_memory_mb,
        max_latency_ms=max_latency_ms,
        min_quality=min_quality,
        capabilities=capabilities,
        on_state=on_state,
        settings=settings,
    ).open()


@dataclass(frozen=True)
class Located:
    """A model resolved and in the local cache (verified), not opened yet: what opening it will cost is known
    before any weights are read, so a pool can make room first (:class:`slmops.runtime.pool.ModelPool`)."""

    folder: Path
    label: str
    device: str
    max_memory_mb: float | None
    settings: Settings
    notify: StateCallback

    @property
    def footprint_bytes(self) -> int:
        """What :meth:`open` adds to resident memory: the graph and its external data."""
        from slmops.runtime.base import weights_bytes
        from slmops.runtime.card import read_model_card

        return weights_bytes(self.folder, read_model_card(self.folder))

    def open(self) -> Model:
        """The opened model. Raises MemoryBudgetError past ``max_memory_mb``, ModelLoadError for a bad graph."""
        self.notify(LoadingEvent(LoadingState.LOADING, self.label))
        try:
            _check_budget(self.folder, self.max_memory_mb)
            model = open_folder(
                self.folder,
                device=self.device,
                threads=self.settings.threads,
                verify=False,
                optimized_dir=self.settings.cache_dir / "optimized",
                huge_pages=self.settings.huge_pages,
            )
        except SlmopsError as exc:
            self.notify(LoadingEvent(LoadingState.FAILED, self.label, detail=str(exc)))
            raise
        self.notify(LoadingEvent(LoadingState.LOADED, self.label))
        return model


def locate(
    target: str | None = None,
    *,
    task: str | None = None,
    device: str | None = None,
    max_memory_mb: float | None = None,
    max_latency_ms: float | None = None,
    min_quality: float | None = None,
    capabilities: list[str] | None = None,
    on_state: StateCallback | None = None,
    settings: Settings | None = None,
) -> Located:
    """The first half of :func:`load` (same arguments and errors): resolve the target through the registry and
    download and verify its files, without opening it."""
    if target is not None and not isinstance(target, str | os.PathLike):
        raise UsageError(f"target={target!r} must be a use case, a models:/ URI or a folder path (a str)")
    if device is not None and device not in DEVICES:
        raise UsageError(f"device={device!r} is not one of {', '.join(DEVICES)}")
    settings = settings or get_settings()
    device = device or settings.device
    target = None if target is None else str(target)
    label = target or f"best {task} model"
    notify = on_state or (lambda event: None)
    notify(LoadingEvent(LoadingState.NOT_LOADED, label))
    try:
        if target is not None and Path(target).is_dir():
            folder = Path(target)
            verify_folder(folder, stamps_dir=settings.cache_dir / "verified")
        else:
            ref = _resolve(
                target,
                task=task,
                device=device,
                max_memory_mb=max_memory_mb,
                max_latency_ms=max_latency_ms,
                min_quality=min_quality,
                capabilities=capabilities or [],
                settings=settings,
            )

            def progress(p: float) -> None:
                notify(LoadingEvent(LoadingState.DOWNLOADING, label, progress=p))

            folder = fetch_version(
                ref, cache_dir=settings.cache_dir, notify=progress, tracking_uri=settings.resolved_tracking_uri()
            )
    except SlmopsError as exc:
        notify(LoadingEvent(LoadingState.FAILED, label, detail=str(exc)))
        raise
    return Located(folder, label, device, max_memory_mb, settings, notify)


def _resolve(
    target: str | None, *, task: str | None, device: str, settings: Settings, **constraints: Any
) -> VersionRef:
    """The registry version to load: through the light reader for aliases and URIs, mlflow's ranking otherwise."""
    from slmops.runtime.registry import registry_reader, resolve_version

    if target is not None:
        return resolve_version(target, reader=registry_reader(settings), settings=settings)
    if task is None:
        raise UsageError("load() needs a target (use case, models:/ URI, folder) or task= with constraints")
    from pydantic import ValidationError  # ranking's Constraints is a pydantic model: this path imports mlflow too

    from slmops.runtime.ranking import Constraints, best, registered_candidates
    from slmops.runtime.registry import MlflowRegistryReader
    from slmops.tasks import get_task

    objective = get_task(task).objective  # UnknownTaskError names the known tasks
    reader = MlflowRegistryReader(settings)  # ranking reads every version's metrics: mlflow's client it is
    try:
        wanted = Constraints(task=task, device=device, **constraints)  # type: ignore[arg-type]  # task/device are plain str here; pydantic validates them
    except ValidationError as exc:
        raise UsageError(f"load() constraints: {describe_validation(exc)}") from None
    chosen = best(
        registered_candidates(reader.client, task, profile=wanted.profile),
        wanted,
        objective,
        what="the given constraints",
    )
    return resolve_version(chosen.uri, reader=reader, settings=settings)


def _check_budget(folder: Path, max_memory_mb: float | None) -> None:
    """Refuse a model whose weights plus runtime overhead exceed the budget, before opening it."""
    if max_memory_mb is None:
        return
    from slmops.artifacts import read_manifest
    from slmops.runtime.base import RUNTIME_OVERHEAD_BYTES, weights_bytes
    from slmops.runtime.card import read_model_card

    manifest = read_manifest(folder)
    weights = weights_bytes(folder, read_model_card(folder))  # counts external data under either name
    need_mb = (weights + RUNTIME_OVERHEAD_BYTES) / 2**20
    if need_mb > max_memory_mb:
        raise MemoryBudgetError(
            f"{manifest.variant} ({folder}) needs about {need_mb:.0f} MB "
            f"(weights + runtime) but max_memory_mb={max_memory_mb:.0f}; raise the budget or choose a smaller precision"
        )
