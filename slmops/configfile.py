"""The one loader of every file in configs/: YAML into its pydantic model, errors naming file, key path and fix.

Every config model is strict (``extra="forbid"``), so a misspelt key is an error, not a silent default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from slmops.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def config_path(name: str) -> Path:
    """``<config_dir>/<name>`` from the settings."""
    from slmops.settings import get_settings

    return get_settings().config_dir / name


def read_yaml(path: Path) -> Any:
    """Parsed YAML of ``path``; ConfigError when it is missing or not valid YAML (with the line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; set SLMOPS_CONFIG_DIR to the folder holding {Path(path).name}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}; fix the syntax there") from None


def _fix(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "remove it or correct its spelling"
    if kind == "missing":
        return "add it"
    return "see the comments in the file for the allowed values"


def describe(exc: ValidationError, *, loc: tuple[str | int, ...] = ()) -> str:
    """The first validation error as 'key.path: message (got value); fix'."""
    err = exc.errors()[0]
    path = ".".join(str(p) for p in (*loc, *err["loc"])) or "(top level)"
    value = err.get("input")
    shown = "" if isinstance(value, dict) or err["type"] == "missing" else f" (got {value!r})"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{path}: {err['msg']}{shown}; {_fix(err)}{more}"


def validate(
    data: Any, model: type[M], *, path: Path, loc: tuple[str | int, ...] = (), error: type[ConfigError] = ConfigError
) -> M:
    """``data`` (part of the file at ``path``, found at ``loc``) as ``model``; ``error`` naming the key path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{path}: {describe(exc, loc=loc)}") from None


def load_config(name: str, model: type[M], *, path: Path | None = None) -> M:
    """The config file ``name`` (``<config_dir>/<name>`` unless ``path`` is given) as one ``model``."""
    path = path or config_path(name)
    return validate(read_yaml(path), model, path=path)


def load_named(name: str, model: type[M], *, key: str, path: Path | None = None) -> dict[str, M]:
    """A top-level ``key:`` mapping of name -> entry, each validated as ``model`` with its ``name`` filled in."""
    path = path or config_path(name)
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise ConfigError(f"{path}: expected a top-level '{key}:' mapping of name -> entry; add one")
    extra = sorted(set(data) - {key})
    if extra:
        raise ConfigError(f"{path}: unknown top-level keys {extra}; only '{key}:' is read: remove them")
    out = {}
    for entry, raw in data[key].items():
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{path}: {key}.{entry}: expected a mapping of fields, got {raw!r}")
        out[entry] = validate({**(raw or {}), "name": entry}, model, path=path, loc=(key, entry))
    return out
