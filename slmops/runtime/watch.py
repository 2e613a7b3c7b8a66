"""Hot swap: the aliases a pool serves follow the registry.

An :class:`AliasWatcher` pins each alias it serves (``"chat-cpu"``, ``"models:/name@alias"``) to the version it
resolved to the first time. :meth:`AliasWatcher.refresh` resolves them again: every ``poll_s`` seconds in the
background (setting ``SLMOPS_ALIAS_POLL_S``; 0: only when asked), or when asked (``slmops serve``'s
``POST /admin/reload`` and SIGHUP). When an alias moved, the new version is downloaded, verified, loaded and
warmed while the old one keeps answering; then the pin moves in one step. Whoever uses a version holds a
:class:`Lease` on it, and a replaced version is unloaded once its last lease is released.

A new version that fails (download, verification, loading, warm-up, the memory budget, or the ``accept`` check)
is not swapped in: the old one keeps serving, :meth:`AliasWatcher.status` says why and the log has the details.
A version that failed is not tried again by the poll, only by an explicit refresh.

An app gets the same behaviour as the server::

    pool = ModelPool(max_memory_mb=1500)
    watcher = AliasWatcher(pool)
    watcher.start()                          # polls every SLMOPS_ALIAS_POLL_S seconds
    with watcher.use("chat-cpu") as model:   # the alias's current version, leased while in use
        print(model.chat([{"role": "user", "content": "Hi!"}]))
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops.errors import IntegrityError, MemoryBudgetError, ModelLoadError, RegistryError
from slmops.runtime.loader import load
from slmops.runtime.open import Model
from slmops.runtime.pages import wait_for_huge_pages
from slmops.runtime.pool import ModelPool
from slmops.runtime.registry import RegistryReader, VersionRef, registry_reader, resolve_version
from slmops.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# at most this long for a swapped-in model's huge-page collapse (0.04-0.65 s measured) before it serves
HUGE_PAGES_WAIT_S = 30.0
# what /ready and /v1/models may say about a failed swap: a fixed phrase per error class (details go to the log)
FAILED_AT = {
    IntegrityError: "failed verification",
    RegistryError: "could not be downloaded",
    MemoryBudgetError: "does not fit the memory budget",
    ModelLoadError: "failed to load",
}


@dataclass
class Pin:
    """One watched alias: the version it is served as, and how the last attempt to follow it went."""

    spec: str
    ref: VersionRef
    pending: str | None = None  # the models:/ URI being loaded to replace ref
    swap_error: str | None = None  # why the alias's current version is not the one served
    failed: tuple[str, str | None] | None = None  # (uri, digest) that failed: the poll does not retry it
    checked_at: float | None = None  # time.time() of the last successful re-resolve


@dataclass(frozen=True)
class Swap:
    """What one refresh did to one alias: ``new`` is None when nothing changed or the swap failed (``error``)."""

    spec: str
    old: str
    new: str | None = None
    error: str | None = None


class Lease:
    """One use of a loaded version; :meth:`release` (or leaving the ``with`` block) ends it, once."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def watched(spec: str) -> bool:
    """Whether ``spec`` names an alias (use case, ``models:/name@alias``), which can move; not a version or folder."""
    if spec.startswith("models:/"):
        return "@" in spec
    return bool(spec) and not Path(spec).is_dir()


def lookup(reader: RegistryReader, spec: str) -> VersionRef | None:
    """The version ``spec`` names now (None when it names none); raises RegistryError when the registry fails."""
    if not spec.startswith("models:/"):
        return reader.alias(spec)
    body = spec.removeprefix("models:/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return reader.alias(alias, name=name) if name and alias else None
    name, _, version = body.partition("/")
    return reader.version(name, version) if name and version.isdigit() else None


class AliasWatcher:
    """Keeps the aliases served from ``pool`` on the versions the registry gives them (see the module docstring).

    ``accept(ref)`` may return a reason to refuse a version (the server refuses versions that did not pass their
    quality gate); ``poll_s`` defaults to the setting ``alias_poll_s``.
    """

    def __init__(
        self,
        pool: ModelPool,
        *,
        poll_s: float | None = None,
        accept: Callable[[VersionRef], str | None] | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings or get_settings()
        self.poll_s = self.settings.alias_poll_s if poll_s is None else poll_s
        self.accept = accept or (lambda ref: None)
        self._pins: dict[str, Pin] = {}
        self._in_use: Counter[str] = Counter()  # pool target -> live leases
        self._retired: set[str] = set()  # replaced targets waiting for their leases to end
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()  # one refresh at a time: the poll, the reload endpoint, SIGHUP
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- using versions ------------------------------------------------------------------------------------------
    def acquire(self, spec: str) -> tuple[VersionRef, Lease] | None:
        """The version ``spec`` is served as, leased; None when ``spec`` names nothing in the registry.

        An alias is pinned on first use: later calls get the same version until a refresh moves it.
        Raises RegistryError when the registry cannot be read.
        """
        with self._lock:
            pin = self._pins.get(spec)
            if pin is not None:
                return pin.ref, self._lease(pin.ref.uri)
        ref = lookup(registry_reader(self.settings), spec)  # a reader per call: SQLite's belongs to its thread
        if ref is None:
            return None
        with self._lock:
            if watched(spec):
                ref = self._pins.setdefault(spec, Pin(spec, ref, checked_at=time.time())).ref
            return ref, self._lease(ref.uri)

    def lease(self, target: str) -> Lease:
        """A lease on the pool target ``target`` (``models:/name/version``): no swap unloads it until released."""
        with self._lock:
            return self._lease(target)

    @contextmanager
    def use(self, spec: str) -> Iterator[Model]:
        """The loaded model ``spec`` is served as, leased for the ``with`` block. Raises RegistryError, as load()."""
        found = self.acquire(spec)
        if found is None:
            resolve_version(spec, reader=registry_reader(self.settings), settings=self.settings)  # raises, naming it
            raise RegistryError(f"{spec} does not resolve in {self.settings.resolved_tracking_uri()}")
        ref, lease = found
        with lease:
            yield self.pool.get(ref.uri)

    def _lease(self, target: str) -> Lease:  # with self._lock held
        self._in_use[target] += 1
        return Lease(lambda: self._release(target))

    def _release(self, target: str) -> None:
        with self._lock:
            self._in_use[target] -= 1
            if self._in_use[target] > 0:
                return
            del self._in_use[target]
            if target not in self._retired:
                return
            self._retired.discard(target)
        self.pool.unload(target)
        logger.info("unloaded %s: its last request finished after a swap", target)

    # -- following the registry ----------------------------------------------------------------------------------
    def refresh(self, *, retry_failed: bool = True) -> list[Swap]:
        """Resolve every watched alias again and swap in the versions that moved (synchronously, one at a time)."""
        with self._refreshing:
            with self._lock:
                specs = list(self._pins)
            reader = registry_reader(self.settings)
            return [swap for spec in specs if (swap := self._follow(spec, reader, retry_failed)) is not None]

    def _follow(self, spec: str, reader: RegistryReader, retry_failed: bool) -> Swap | None:
        pin = self._pins[spec]
        old = pin.ref
        try:
            ref = lookup(reader, spec)
        except RegistryError as exc:
            logger.warning("cannot re-resolve %s (still serving %s): %s", spec, old.uri, exc)
            return self._fail(pin, None, f"the registry could not be read; still serving {old.uri}")
        pin.checked_at = time.time()
        if ref is None:
            return self._fail(pin, None, f"{spec} no longer resolves in the registry; still serving {old.uri}")
        if (ref.uri, ref.digest) == (old.uri, old.digest):
            pin.swap_error = pin.failed = None
            return None
        if not retry_failed and pin.failed == (ref.uri, ref.digest):
            return None
        refused = self.accept(ref)
        if refused:
            logger.warning("not swapping %s to %s: %s", spec, ref.uri, refused)
            return self._fail(pin, ref, f"{refused}; still serving {old.uri}")
        pin.pending = ref.uri
        try:
            self._load_and_warm(ref)
        except Exception as exc:  # any failure of the new version leaves the old one serving
            what = next((text for cls, text in FAILED_AT.items() if isinstance(exc, cls)), "failed its warm-up")
            logger.warning("not swapping %s to %s: %s (%s: %s)", spec, ref.uri, what, type(exc).__name__, exc)
            return self._fail(pin, ref, f"{ref.uri} {what}; still serving {old.uri}")
        finally:
            pin.pending = None
        with self._lock:
            pin.ref, pin.swap_error, pin.failed = ref, None, None
            self._retired.discard(ref.uri)  # an alias that moved back to a version still draining
            drained = False
            if all(p.ref.uri != old.uri for p in self._pins.values()):
                drained = not self._in_use[old.uri]
                if not drained:
                    self._retired.add(old.uri)
        if drained:
            self.pool.unload(old.uri)
        logger.warning("swapped %s from %s to %s", spec, old.uri, ref.uri)
        return Swap(spec, old.uri, ref.uri)

    def _load_and_warm(self, ref: VersionRef) -> None:
        if ref.uri in self.pool.loaded():  # another alias swapped to it already
            return
        model = load(ref.uri, **self.pool.load_options)
        try:
            model.warm_up()
            # its weights onto huge pages now, while the old version serves: running beside the first requests, the
            # collapse would stall them (slmops/runtime/pages.py)
            wait_for_huge_pages(timeout=HUGE_PAGES_WAIT_S)
            self.pool.put(ref.uri, model)
        except Exception:
            model.unload()
            raise

    def _fail(self, pin: Pin, ref: VersionRef | None, why: str) -> Swap:
        pin.swap_error = why
        if ref is not None:
            pin.failed = (ref.uri, ref.digest)
        return Swap(pin.spec, pin.ref.uri, None, why)

    # -- background polling --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background thread: it refreshes every ``poll_s`` seconds (never if 0) and on refresh_soon()."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="slmops-alias-watcher", daemon=True)
        self._thread.start()

    def refresh_soon(self) -> None:
        """Ask the background thread for a refresh now (safe from a signal handler: it only sets an event)."""
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the background thread (a refresh in progress finishes first, up to ``timeout_s``)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            asked = self._wake.wait(self.poll_s if self.poll_s > 0 else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh(retry_failed=asked)
            except Exception:  # the watcher outlives one bad refresh
                logger.exception("refreshing the served aliases failed")

    # -- reporting -----------------------------------------------------------------------------------------------
    def pinned(self, spec: str) -> VersionRef | None:
        """The version a watched alias is served as, or None if it has not been used yet."""
        with self._lock:
            pin = self._pins.get(spec)
            return pin.ref if pin is not None else None

    def status(self) -> dict[str, dict[str, Any]]:
        """Per watched alias: the version served, the one being loaded, and why the last swap failed (if it did)."""
        with self._lock:
            return {
                spec: {
                    "registered_model": pin.ref.name,
                    "version": pin.ref.version,
                    "pending": pin.pending,
                    "swap_error": pin.swap_error,
                    "checked_at": None if pin.checked_at is None else int(pin.checked_at),
                }
                for spec, pin in sorted(self._pins.items())
            }

    def draining(self) -> list[str]:
        """Replaced versions still loaded because requests use them."""
        with self._lock:
            return sorted(self._retired)
