"""A pool of loaded models bounded by memory: the least recently used model is unloaded first."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from slmops.errors import MemoryBudgetError, UsageError
from slmops.runtime.base import RUNTIME_OVERHEAD_BYTES
from slmops.runtime.loader import load
from slmops.runtime.open import Model

logger = logging.getLogger(__name__)


class ModelPool:
    """Keeps models loaded by target (use case, models:/ URI or folder) within ``max_memory_mb``.

    The budget covers the weights of every loaded model plus one runtime overhead; loading a
    model that does not fit unloads the least recently used ones first.
    """

    def __init__(self, *, max_memory_mb: float, **load_options: Any) -> None:
        if max_memory_mb <= 0:
            raise UsageError(f"max_memory_mb={max_memory_mb} must be positive; pass the pool's memory budget in MiB")
        self.max_bytes = int(max_memory_mb * 2**20)
        self._load_options = load_options
        self._models: OrderedDict[str, Model] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        return RUNTIME_OVERHEAD_BYTES + sum(m.footprint_bytes for m in self._models.values())

    def loaded(self) -> list[str]:
        """Targets currently loaded, least recently used first."""
        return list(self._models)

    def get(self, target: str) -> Model:
        """The loaded model for ``target``, loading it (and evicting others) if needed."""
        with self._lock:
            if target in self._models:
                self._models.move_to_end(target)
                return self._models[target]
            model = load(target, **self._load_options)
            need = model.footprint_bytes
            if need + RUNTIME_OVERHEAD_BYTES > self.max_bytes:
                model.unload()
                raise MemoryBudgetError(
                    f"{target!r} needs about {(need + RUNTIME_OVERHEAD_BYTES) / 2**20:.0f} MB, more than the pool's "
                    f"max_memory_mb={self.max_bytes / 2**20:.0f}; raise it or pick a smaller model"
                )
            while self._models and self.used_bytes + need > self.max_bytes:
                evicted, old = self._models.popitem(last=False)
                old.unload()
                logger.info("unloaded %s to make room for %s", evicted, target)
            self._models[target] = model
            return model

    def unload(self, target: str) -> None:
        """Unload ``target`` if it is loaded."""
        with self._lock:
            model = self._models.pop(target, None)
        if model is not None:
            model.unload()

    def clear(self) -> None:
        with self._lock:
            models, self._models = list(self._models.values()), OrderedDict()
        for model in models:
            model.unload()

    # -- hooks for the alias watcher (slmops.runtime.watch), which loads a new version outside the pool's lock
    @property
    def load_options(self) -> dict[str, Any]:
        """The options every load of this pool uses (device, settings...)."""
        return dict(self._load_options)

    def put(self, target: str, model: Model) -> None:
        """Add an already loaded ``model`` under ``target``, unloading least recently used others to fit the budget.

        Raises MemoryBudgetError (leaving ``model`` loaded, for the caller to unload) when it cannot fit at all.
        """
        need = model.footprint_bytes
        with self._lock:
            if need + RUNTIME_OVERHEAD_BYTES > self.max_bytes:
                raise MemoryBudgetError(
                    f"{target!r} needs about {(need + RUNTIME_OVERHEAD_BYTES) / 2**20:.0f} MB, more than the pool's "
                    f"max_memory_mb={self.max_bytes / 2**20:.0f}; raise it or pick a smaller model"
                )
            replaced = self._models.pop(target, None)
            while self._models and self.used_bytes + need > self.max_bytes:
                evicted, old = self._models.popitem(last=False)
                old.unload()
                logger.info("unloaded %s to make room for %s", evicted, target)
            self._models[target] = model
        if replaced is not None and replaced is not model:
            replaced.unload()
