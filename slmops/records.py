"""Typed, validated records for the runtime loader's path, on the standard library's dataclasses.

The settings, manifests, model cards and generation parameters that ``slmops.load`` and every generation step
read are :class:`Record` dataclasses, not pydantic models. Measured 2026-12-01 (2-core Xeon, one process per
run): pydantic and the four models cost the loader 14-16 MB of resident memory, 5% of a served SmolLM2's peak,
and 0.13-0.25 s of its 0.9 s cold start (pydantic's import, then building each model's core schema at class
definition). These records cost 0.4 MB and under 5 ms. Configs, the pipeline's results and the HTTP request
bodies stay pydantic models (the CLI, the flows and FastAPI import it anyway).

Validation follows pydantic's lax mode where the loader met it: numbers and booleans may come as strings (from
the environment), an int-valued float is an int, a str is a ``Path``; ``Literal`` choices, bounds (``ge``,
``gt``, ``le``, ``lt``), ``X | None``, tuples, lists, ``dict[str, X]`` and nested records are checked. Every
problem is collected, then raised as one :class:`~slmops.errors.RecordError` whose ``errors()`` has pydantic's
shape (``loc``, ``type``, ``input``, ``msg``), so :func:`slmops.errors.describe_validation` reads both.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from slmops.errors import RecordError

R = TypeVar("R", bound="Record")
_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}
_BOOL_WORDS = _TRUE | _FALSE
_BOUNDS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "ge": (lambda v, b: v >= b, "greater than or equal to"),
    "gt": (lambda v, b: v > b, "greater than"),
    "le": (lambda v, b: v <= b, "less than or equal to"),
    "lt": (lambda v, b: v < b, "less than"),
}


def spec(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    env: tuple[str, ...] = (),
    description: str = "",
    repr: bool = True,  # noqa: A002  # dataclasses.field's own name for it
) -> Any:
    """A record field: its default, bounds, environment variables (settings) and description."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"bounds": bounds, "env": env, "description": description}
    return dataclasses.field(default=default, default_factory=default_factory, repr=repr, metadata=metadata)


class _Invalid(Exception):
    """Problems of one value, their ``loc`` relative to it (a list item's index, a dict's key, a nested field)."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__(problems)
        self.problems = problems

    @classmethod
    def one(cls, kind: str, msg: str, value: Any) -> _Invalid:
        return cls([{"loc": (), "type": kind, "input": value, "msg": msg}])

    def under(self, key: Any) -> list[dict[str, Any]]:
        return [{**p, "loc": (key, *p["loc"])} for p in self.problems]


class Record:
    """Base of the records: subclasses are ``@dataclasses.dataclass(frozen=True, kw_only=True)``; building one
    validates it and raises RecordError naming every bad field.

    ``from_dict`` is the way in for untrusted mappings (JSON files, keyword options): an unknown key is an error.
    Override ``_before`` to reshape raw values and ``_after`` for rules across fields.
    """

    _types: ClassVar[dict[str, Any]]

    def __post_init__(self) -> None:
        problems: list[dict[str, Any]] = []
        hints = _hints(type(self))
        raw = self._before({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})  # type: ignore[arg-type]
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            try:
                value = _convert(hints[f.name], raw[f.name])
                _check_bounds(value, f.metadata.get("bounds", {}), given=raw[f.name])
            except _Invalid as bad:
                problems += bad.under(f.name)
                continue
            object.__setattr__(self, f.name, value)
        if not problems:
            problems = [{"loc": (name,), "type": "value_error", "input": getattr(self, name), "msg": msg}
                        for name, msg in self._after()]  # fmt: skip
        if problems:
            raise RecordError(problems, record=type(self).__name__)

    @classmethod
    def _before(cls, values: dict[str, Any]) -> dict[str, Any]:
        return values

    def _after(self) -> list[tuple[str, str]]:
        """(field, message) for each rule across fields that the valid fields break."""
        return []

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """Build from a mapping; raises RecordError naming every unknown, missing or invalid field."""
        if not isinstance(data, Mapping):
            raise invalid(cls, (), data, "must be an object", kind="dict_type")
        known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        problems: list[dict[str, Any]] = []
        problems += [{"loc": (k,), "type": "extra_forbidden", "input": v, "msg": "unknown field"}
                     for k, v in data.items() if k not in known]  # fmt: skip
        problems += [
            {"loc": (name,), "type": "missing", "input": None, "msg": "is required"}
            for name, f in known.items()
            if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if problems:
            raise RecordError(problems, record=cls.__name__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (paths as strings, tuples as lists, nested records as dicts)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def replace(self: R, **changes: Any) -> R:
        """A validated copy with ``changes``."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def invalid(record: type, loc: tuple[str, ...], value: Any, msg: str, *, kind: str = "value_error") -> RecordError:
    """The error for one bad value (``loc``: the field's name, or () for the whole record)."""
    return RecordError([{"loc": loc, "type": kind, "input": value, "msg": msg}], record=record.__name__)


def _hints(cls: type) -> dict[str, Any]:
    cached = cls.__dict__.get("_types")
    if cached is None:
        cached = typing.get_type_hints(cls)
        cls._types = cached  # type: ignore[attr-defined]
    return cached


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check_bounds(value: Any, bounds: dict[str, float], *, given: Any) -> None:
    if value is None:
        return
    for key, bound in bounds.items():
        holds, words = _BOUNDS[key]
        if not holds(value, bound):
            raise _Invalid.one(key, f"must be {words} {bound}", given)


def _each(items: Iterable[tuple[Any, Any]], convert: Callable[[Any], Any]) -> dict[Any, Any]:
    """Every item converted; the problems of all bad ones, each under its key or index."""
    out, problems = {}, []
    for key, value in items:
        try:
            out[key] = convert(value)
        except _Invalid as bad:
            problems += bad.under(key)
    if problems:
        raise _Invalid(problems)
    return out


def _number(tp: type, value: Any) -> Any:
    """An int or float field's value: a number of that kind (an int-valued float for an int), or its text."""
    if isinstance(value, bool):
        pass  # a bool is an int to Python, never a number here
    elif isinstance(value, int) or (isinstance(value, float) and (tp is float or value.is_integer())):
        return tp(value)
    elif isinstance(value, str):
        try:
            return tp(value.strip())
        except ValueError:
            pass
    if tp is int:
        raise _Invalid.one("int_parsing", "must be an integer", value)
    raise _Invalid.one("float_parsing", "must be a number", value)


def _convert(tp: Any, value: Any) -> Any:  # noqa: C901, PLR0911, PLR0912  # one branch per supported type
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # X | None is the only union records use
        return _convert(inner, value)
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise _Invalid.one("literal_error", "must be one of " + ", ".join(repr(a) for a in args), value)
    if origin in (tuple, list):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise _Invalid.one(f"{origin.__name__}_type", "must be a list", value)
        items = _each(((i, v) for i, v in enumerate(value)), lambda v: _convert(args[0], v))
        return tuple(items.values()) if origin is tuple else list(items.values())
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _Invalid.one("dict_type", "must be an object", value)
        if not all(isinstance(k, str) for k in value):
            raise _Invalid.one("dict_type", "must have string keys", value)
        return _each(value.items(), lambda v: _convert(args[1], v))
    if isinstance(tp, type) and issubclass(tp, Record):
        if isinstance(value, tp):
            return value
        try:
            return tp.from_dict(value)
        except RecordError as exc:
            raise _Invalid(exc.errors()) from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return value.strip().lower() in _TRUE
        raise _Invalid.one("bool_parsing", "must be a boolean (true/false, 1/0, yes/no)", value)
    if tp is int or tp is float:
        return _number(tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Invalid.one("string_type", "must be a string", value)
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise _Invalid.one("path_type", "must be a path", value)
    raise TypeError(f"records do not support fields of type {tp!r}")  # a programming error, not bad input
