"""Named, swappable parts (exporters, fetch sources, quantizers): a plain dict per kind, filled explicitly.

A :class:`PluginRegistry` names the modules holding its built-in parts and, optionally, an
entry-point group for third-party ones. Both are imported on the first lookup, in that order, so
registration never depends on some other module having imported a part for its side effect.
A part registers itself with ``@REGISTRY.register("name")``, built-in or not.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from slmops.errors import UnknownPluginError

T = TypeVar("T")


class PluginRegistry(Generic[T]):
    """name -> part, loaded on first lookup from ``builtins`` (module paths) and the entry-point ``group``."""

    def __init__(self, kind: str, *, builtins: tuple[str, ...], group: str | None = None) -> None:
        self.kind = kind
        self._builtins = builtins
        self._group = group
        self._parts: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering a part under ``name`` (a later registration replaces an earlier one)."""

        def deco(part: T) -> T:
            self._parts[name] = part
            return part

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtins:
            importlib.import_module(module)
        if self._group:
            for ep in entry_points(group=self._group):
                self._parts.setdefault(ep.name, ep.load())

    def __getitem__(self, name: str) -> T:
        self._load()
        try:
            return self._parts[name]
        except KeyError:
            raise UnknownPluginError(f"unknown {self.kind} {name!r}; use one of {', '.join(self._parts)}") from None

    def get(self, name: str, default: T | None = None) -> T | None:
        self._load()
        return self._parts.get(name, default)

    def __setitem__(self, name: str, part: T) -> None:
        self._load()
        self._parts[name] = part

    def __delitem__(self, name: str) -> None:
        del self._parts[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._parts))

    def names(self) -> list[str]:
        return list(self)
