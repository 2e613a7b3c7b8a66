"""Reading config files from configs/ into their pydantic models, with errors naming file, entry and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from slmops.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: Path, *, what: str) -> Any:
    """Parsed YAML of ``path``; ConfigError when it is missing or malformed."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} not found; set SLMOPS_CONFIG_DIR to the folder holding it") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def describe(exc: ValidationError) -> str:
    """The first validation error as 'field.path: message (got value)'."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(entry)"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


def load_model(path: Path, model: type[M], *, what: str) -> M:
    """The whole file as one ``model``."""
    data = read_yaml(path, what=what)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe(exc)}") from None


def load_named(path: Path, model: type[M], *, key: str, what: str) -> dict[str, M]:
    """A top-level ``key:`` mapping of name -> entry, each validated as ``model`` with its ``name`` filled in."""
    data = read_yaml(path, what=what)
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise ConfigError(f"{path}: expected a top-level '{key}:' mapping of name -> {what}")
    out = {}
    for name, raw in data[key].items():
        try:
            out[name] = model.model_validate({**(raw or {}), "name": name})
        except ValidationError as exc:
            raise ConfigError(f"{path}: {what} {name!r}: {describe(exc)}") from None
    return out


def config_path(name: str) -> Path:
    """``<config_dir>/<name>`` from the settings."""
    from slmops.settings import get_settings

    return get_settings().config_dir / name
