"""Which models the server answers for: registered versions that passed their gate, and folders named at start-up.

A request's ``model`` is resolved to one :class:`Served` entry, and the pool is keyed by what that entry
opens (``models:/name/version`` or the named folder), so every spelling of the same version shares one
loaded instance. Nothing here looks at the file system for a request: a path in ``model`` is only ever
compared with the names the operator gave, and any miss gets the same answer.
"""

from __future__ import annotations

import logging
import threading
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops.errors import ModelNotServedError, UsageError
from slmops.runtime.open import Model
from slmops.runtime.pool import ModelPool
from slmops.runtime.registry import VersionRef, registry_reader
from slmops.runtime.watch import AliasWatcher, Lease
from slmops.settings import Settings, get_settings

logger = logging.getLogger(__name__)

GATE_PASSED = "passed"  # the value of names.TAG_GATE on a version that passed its quality gate

# the leases the current HTTP request holds on the versions it uses; LeaseScope releases them when it has answered
REQUEST_LEASES: ContextVar[list[Lease] | None] = ContextVar("slmops_request_leases", default=None)


def gate_refusal(ref: VersionRef) -> str | None:
    """Why ``ref`` may not be served (the alias watcher's ``accept`` check), or None."""
    return None if ref.gate == GATE_PASSED else f"{ref.uri} has not passed its quality gate"


class LeaseScope:
    """ASGI middleware: the versions a request resolved stay leased until its response is sent, streams included,
    so a hot swap unloads a replaced version only after the requests using it have finished."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        leases: list[Lease] = []
        token = REQUEST_LEASES.set(leases)
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_LEASES.reset(token)
            for lease in leases:
                lease.release()


@dataclass(frozen=True)
class Served:
    """One servable model version and what the server says about it."""

    target: str  # what the pool loads: models:/name/version, or a named folder's path
    registered_model: str | None
    version: str  # the registry version, or "local" for a named folder
    variant: str | None
    recipe: str | None
    digest: str | None
    local_name: str | None = None  # the name a folder was given at start-up

    @property
    def fingerprint(self) -> str:
        """Which version answered: ``slmops-causal-lm/3:<digest12>`` (``local/<name>:<digest12>`` for a folder)."""
        where = f"{self.registered_model}/{self.version}" if self.registered_model else f"local/{self.local_name}"
        return f"{where}:{(self.digest or 'unknown')[:12]}"


def not_served(model: str, why: str = "") -> ModelNotServedError:
    return ModelNotServedError(
        f"model {model!r} is not a served model{why}; GET /v1/models lists the models this server answers for"
    )


class ServedModels:
    """Resolves request ``model`` names and opens them through ``pool``."""

    def __init__(
        self,
        pool: ModelPool,
        *,
        local: dict[str, Path] | None = None,
        settings: Settings | None = None,
        watcher: AliasWatcher | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings or get_settings()
        self.local = {name: _local(name, Path(folder)) for name, folder in (local or {}).items()}
        self.watcher = watcher or AliasWatcher(pool, accept=gate_refusal, settings=self.settings)
        self._loading: dict[str, int] = {}  # target -> requests waiting for its first load (/ready says 503)
        self._loading_lock = threading.Lock()

    def resolve(self, model: str) -> Served:
        """The entry ``model`` names. Raises ModelNotServedError, RegistryError when the registry cannot be read.

        An alias resolves to the version the watcher serves it as; inside a request (LeaseScope) that version
        stays leased until the response is sent.
        """
        if model in self.local:
            return self.local[model]
        found = self.watcher.acquire(model) if model else None
        if found is None:
            raise not_served(model)
        ref, lease = found
        leases = REQUEST_LEASES.get()
        if leases is None or ref.gate != GATE_PASSED:
            lease.release()  # outside a request nothing would release it; a refused version is not used
        else:
            leases.append(lease)
        if ref.gate != GATE_PASSED:
            raise not_served(model, f": it resolves to {ref.uri}, which has not passed its quality gate")
        return Served(ref.uri, ref.name, ref.version, ref.variant, ref.recipe, ref.digest)

    def open(self, served: Served) -> Model:
        """The loaded model of ``served`` (loaded now if needed)."""
        return self.pool.get(served.target)

    def acquire(self, served: Served) -> Model:
        """:meth:`open`, held until :meth:`release`: the pool does not unload it while a request uses it."""
        target = served.target
        if target in self.pool.loaded():
            return self.pool.acquire(target)
        with self._loading_lock:
            self._loading[target] = self._loading.get(target, 0) + 1
        try:
            return self.pool.acquire(target)
        finally:
            with self._loading_lock:
                self._loading[target] -= 1
                if not self._loading[target]:
                    del self._loading[target]

    def loading(self) -> list[str]:
        """Targets being loaded for a request right now."""
        with self._loading_lock:
            return sorted(self._loading)

    def release(self, model: Model) -> None:
        self.pool.release(model)

    def listing(self) -> list[dict[str, Any]]:
        """``/v1/models``: every registry alias whose version passed its gate, then the named folders."""
        loaded = set(self.pool.loaded())
        entries: list[dict[str, Any]] = []
        reader = registry_reader(self.settings)
        watched = self.watcher.status()
        for alias, name in reader.aliases():
            pinned = self.watcher.pinned(alias)  # what is served, once the alias has been used
            ref = pinned if pinned is not None and pinned.name == name else reader.alias(alias, name=name)
            if ref is not None and ref.gate == GATE_PASSED:
                served = Served(ref.uri, ref.name, ref.version, ref.variant, ref.recipe, ref.digest)
                entries.append(_entry(alias, served, loaded) | _swap_state(watched.get(alias)))
        entries += [_entry(name, served, loaded) for name, served in self.local.items()]
        return entries


def _entry(name: str, served: Served, loaded: set[str]) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "slmops",
        "registered_model": served.registered_model,
        "version": served.version,
        "variant": served.variant,
        "recipe": served.recipe,
        "digest": served.digest,
        "fingerprint": served.fingerprint,
        "state": "loaded" if served.target in loaded else "available",
    }


def _swap_state(watched: dict[str, Any] | None) -> dict[str, Any]:
    if watched is None:
        return {}
    state = {"swap_error": watched["swap_error"]}
    return state | ({"state": "swapping"} if watched["pending"] else {})


def _local(name: str, folder: Path) -> Served:
    """A folder the operator named: checked now (its errors, paths included, go to the operator's terminal)."""
    from slmops.artifacts import read_manifest
    from slmops.runtime.card import read_model_card

    if not name or name.startswith("models:/"):
        raise UsageError(f"--model name {name!r} must be non-empty and not a models:/ URI")
    if not folder.is_dir():
        raise UsageError(f"--model {name}={folder}: no such folder")
    manifest = read_manifest(folder, verify=True)
    card = read_model_card(folder)
    return Served(str(folder.resolve()), None, "local", card.variant, card.recipe, manifest.digest(), name)


def parse_model_option(value: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (served as ``<variant>-<recipe>`` from its model card)."""
    name, sep, path = value.partition("=")
    if not sep:
        from slmops.runtime.card import read_model_card

        path, name = value, ""
        try:
            card = read_model_card(Path(path))
        except Exception as exc:
            raise UsageError(f"--model {value}: {exc}") from None
        name = f"{card.variant}-{card.recipe}"
    return name, Path(path)
