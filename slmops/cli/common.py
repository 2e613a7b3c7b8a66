"""Shared CLI plumbing: one-line errors, logging set-up, the project, JSON output."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from slmops.errors import SlmopsError

F = TypeVar("F", bound=Callable[..., Any])
# Piped output (make run, CI logs) gets wide tables instead of Rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def cli_errors(fn: F) -> F:
    """Turn any SlmopsError into one red line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SlmopsError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature F promises


def setup_logging(verbose: int) -> None:
    """Configure handlers once, at the entry point (library modules only create loggers)."""
    from rich.logging import RichHandler

    from slmops.settings import get_settings

    level = {0: get_settings().log_level, 1: "INFO"}.get(verbose, "DEBUG")
    logging.basicConfig(
        level="WARNING", handlers=[RichHandler(console=err_console, show_path=False)], format="%(message)s", force=True
    )
    logging.getLogger("slmops").setLevel(level)
    # progress lines of long work (slmops.fetch.progress: downloads off a terminal) stand in for a bar: shown by default
    logging.getLogger("slmops.progress").setLevel(min(logging.INFO, logging.getLogger("slmops").level))


def project() -> Any:
    from slmops.project import Project

    return Project.load()


def print_json(data: Any) -> None:
    """``data`` (a stage result or plain data) as indented JSON on stdout."""
    data = {k: _plain(v) for k, v in data.items()} if isinstance(data, dict) else _plain(data)
    typer.echo(json.dumps(data, indent=2, default=str))


def _plain(value: Any) -> Any:
    """A pydantic model or a record (slmops.records) as JSON-ready data; anything else as it is."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value
