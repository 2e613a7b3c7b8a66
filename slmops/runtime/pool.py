"""A pool of loaded models bounded by memory: the least recently used idle model is unloaded first.

A server holds each model it answers with through :meth:`ModelPool.acquire` / :meth:`ModelPool.release` (or
:meth:`ModelPool.lease`): a model with holders is never unloaded. Eviction skips it, and :meth:`unload` /
:meth:`clear` only take it out of the pool; its session is released when its last holder lets go.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from slmops.errors import MemoryBudgetError, ModelBusyError, UsageError
from slmops.runtime.base import RUNTIME_OVERHEAD_BYTES
from slmops.runtime.loader import locate
from slmops.runtime.open import Model

logger = logging.getLogger(__name__)


class ModelPool:
    """Keeps models loaded by target (use case, models:/ URI or folder) within ``max_memory_mb``.

    The budget covers the weights of every loaded model (draining ones and ones being opened included) plus one
    runtime overhead; loading a model that does not fit unloads the least recently used idle ones first, before
    its weights are read. A load runs outside the pool's lock: other targets are served meanwhile, and concurrent
    requests for the target being loaded wait for that one load.
    """

    def __init__(self, *, max_memory_mb: float, **load_options: Any) -> None:
        if max_memory_mb <= 0:
            raise UsageError(f"max_memory_mb={max_memory_mb} must be positive; pass the pool's memory budget in MiB")
        self.max_bytes = int(max_memory_mb * 2**20)
        self._load_options = load_options
        self._models: OrderedDict[str, Model] = OrderedDict()
        self._holders: dict[int, int] = {}  # id(model) -> requests holding it
        self._draining: dict[int, Model] = {}  # taken out of the pool while held: unloaded on the last release
        self._opening: dict[str, int] = {}  # target -> bytes reserved for a model being opened
        self._pending: dict[str, threading.Event] = {}  # target -> set when its load ends (either way)
        self._lock = threading.RLock()

    @property
    def used_bytes(self) -> int:
        with self._lock:
            models = [*self._models.values(), *self._draining.values()]
            reserved = sum(self._opening.values())
        return RUNTIME_OVERHEAD_BYTES + reserved + sum(m.footprint_bytes for m in models)

    def loaded(self) -> list[str]:
        """Targets currently loaded, least recently used first."""
        with self._lock:
            return list(self._models)

    def in_use(self, target: str) -> int:
        """How many holders ``target``'s loaded model has (0 when it is idle or not loaded)."""
        with self._lock:
            model = self._models.get(target)
            return 0 if model is None else self._holders.get(id(model), 0)

    def get(self, target: str) -> Model:
        """The loaded model for ``target``, loading it (and evicting idle others) if needed.

        Raises MemoryBudgetError when it cannot fit the budget, ModelBusyError when only unloading models that
        are in use (:meth:`acquire`) would make room; a request waiting on another's load of the same target
        then tries for itself, and gets its own answer.
        """
        while True:
            with self._lock:
                if target in self._models:
                    self._models.move_to_end(target)
                    return self._models[target]
                pending = self._pending.get(target)
                if pending is None:
                    done = self._pending[target] = threading.Event()
            if pending is not None:
                pending.wait()
                continue
            try:
                return self._load(target)
            finally:
                with self._lock:
                    del self._pending[target]
                done.set()

    def _load(self, target: str) -> Model:
        """Resolve and fetch ``target``, make room for its weights, then open it; the lock is held only to
        account: resolving, downloading and opening run outside it."""
        located = locate(target, **self._load_options)
        need = located.footprint_bytes
        with self._lock:
            self._make_room(target, need)
            self._opening[target] = need
        try:
            model = located.open()
        except BaseException:
            with self._lock:
                del self._opening[target]
            raise
        with self._lock:
            del self._opening[target]
            self._models[target] = model
        return model

    def acquire(self, target: str) -> Model:
        """:meth:`get`, holding the model until :meth:`release`: it is not unloaded while held."""
        while True:
            model = self.get(target)
            with self._lock:
                if self._models.get(target) is model:  # not evicted or replaced between the two
                    self._holders[id(model)] = self._holders.get(id(model), 0) + 1
                    return model

    def release(self, model: Model) -> None:
        """Let go of a model from :meth:`acquire`; the last release of a model taken out of the pool unloads it."""
        with self._lock:
            count = self._holders.get(id(model), 0) - 1
            if count < 0:
                raise UsageError("release() of a model that is not held; pair it with acquire()")
            if count:
                self._holders[id(model)] = count
                return
            del self._holders[id(model)]
            drained = self._draining.pop(id(model), None)
        if drained is not None:
            drained.unload()
            logger.info("unloaded %s (%s) once its last request ended", drained.card.variant, drained.card.recipe)

    @contextmanager
    def lease(self, target: str) -> Iterator[Model]:
        """``with pool.lease(target) as model:`` :meth:`acquire` and :meth:`release` around a block."""
        model = self.acquire(target)
        try:
            yield model
        finally:
            self.release(model)

    def _make_room(self, target: str, need: int) -> None:
        if need + RUNTIME_OVERHEAD_BYTES > self.max_bytes:
            raise MemoryBudgetError(
                f"{target!r} needs about {(need + RUNTIME_OVERHEAD_BYTES) / 2**20:.0f} MB, more than the pool's "
                f"max_memory_mb={self.max_bytes / 2**20:.0f}; raise it or pick a smaller model"
            )
        idle = [t for t, m in self._models.items() if id(m) not in self._holders]  # least recently used first
        excess = self.used_bytes + need - self.max_bytes
        freeable = sum(self._models[t].footprint_bytes for t in idle)
        if excess > freeable:  # unloading every idle model would not be enough: unload none
            busy = [t for t in self._models if t not in idle] + [m.card.variant for m in self._draining.values()]
            raise ModelBusyError(
                f"{target!r} needs about {need / 2**20:.0f} MB more and the models that would have to be unloaded "
                f"are serving requests ({', '.join(busy)}); try again when they finish"
            )
        for evicted in idle:
            if self.used_bytes + need <= self.max_bytes:
                break
            self._models.pop(evicted).unload()
            logger.info("unloaded %s to make room for %s", evicted, target)

    def unload(self, target: str) -> None:
        """Take ``target`` out of the pool and unload it, or, while requests hold it, once the last one ends."""
        with self._lock:
            model = self._models.pop(target, None)
            if model is not None and id(model) in self._holders:
                self._draining[id(model)] = model
                return
        if model is not None:
            model.unload()

    def clear(self) -> None:
        """:meth:`unload` every model."""
        for target in self.loaded():
            self.unload(target)

    # -- hooks for the alias watcher (slmops.runtime.watch), which loads a new version outside the pool's lock
    @property
    def load_options(self) -> dict[str, Any]:
        """The options every load of this pool uses (device, settings...)."""
        return dict(self._load_options)

    def put(self, target: str, model: Model) -> None:
        """Add an already loaded ``model`` under ``target``, unloading least recently used idle others to fit.

        A model it replaces under ``target`` is unloaded, or drained first while requests hold it. Raises
        MemoryBudgetError / ModelBusyError (leaving ``model`` loaded, for the caller to unload) when it cannot fit.
        """
        with self._lock:
            replaced = self._models.pop(target, None)
            try:
                self._make_room(target, model.footprint_bytes)
            except BaseException:
                if replaced is not None:
                    self._models[target] = replaced
                raise
            self._models[target] = model
            if replaced is None or replaced is model:
                return
            if id(replaced) in self._holders:
                self._draining[id(replaced)] = replaced
                return
        replaced.unload()
