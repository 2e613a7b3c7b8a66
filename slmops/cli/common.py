"""Shared CLI plumbing: one-line errors, logging set-up, the project, JSON output."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
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


# How long a child process (Prefect's temporary API server, a benchmark worker) gets to end after SIGTERM
CHILD_STOP_S = 5.0
# How long a flow gets to stop on its own after SIGTERM before sigterm_watchdog ends the process
SIGTERM_GRACE_S = 10.0


def stop_children_on_sigterm() -> None:
    """From now on, SIGTERM ends this process's child processes and then the process, with status 143.

    Python's default SIGTERM ends a process where it stands, running no atexit handler and telling no child: a
    ``python -m flows.build`` stopped that way left Prefect's temporary API server (a uvicorn child, ~200 MB)
    running for good, holding the build's stdout open, so a pipe reading it (``make run | tee``, a CI log)
    never ended; a stage left its benchmark worker or model-builder subprocess running. While a flow runs,
    Prefect's engine puts its own handler first (it records the run as crashed), then sends the signal again
    to the handler it replaced: this one. The process ends with ``os._exit``: the interpreter's normal exit
    would wait for a stage running in a task runner's thread (minutes); what that stage was writing is a temp
    folder the next build removes, as after SIGKILL, and the build lock goes with the process. Where Prefect's
    handler loses the signal, :func:`sigterm_watchdog` ends the process instead.
    """
    signal.signal(signal.SIGTERM, lambda signum, _frame: _end_process(signum))


@contextlib.contextmanager
def sigterm_watchdog(grace_s: float = SIGTERM_GRACE_S) -> Iterator[None]:
    """Inside: the first SIGTERM also starts a timer that ends the process as :func:`stop_children_on_sigterm`
    does (children first, status 143) if it is still running ``grace_s`` seconds later; the handler in place
    (Prefect's, inside a flow) runs as before.

    Prefect's SIGTERM handler raises its TerminationSignal wherever the main thread stands; where that is an
    object's ``__del__`` (an asyncio transport's, once in CI), Python prints "Exception ignored", the signal
    is lost, and the build goes on. Entered in the flow body, so it wraps Prefect's handler; a no-op off the
    main thread, where handlers cannot be set.
    """
    try:
        inner = signal.getsignal(signal.SIGTERM)
        armed = threading.Event()

        def handler(signum: int, frame: Any) -> None:
            if not armed.is_set():
                armed.set()
                threading.Thread(target=_end_after, args=(grace_s, signum), name="slmops-sigterm", daemon=True).start()
            if callable(inner):
                inner(signum, frame)
            elif inner != signal.SIG_IGN:  # SIG_DFL, or a handler set outside Python
                _end_process(signum)

        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, inner)


def _end_after(grace_s: float, signum: int) -> None:
    time.sleep(grace_s)
    _end_process(signum, f"still running {grace_s:g} s after it")


def _end_process(signum: int, why: str = "") -> None:
    """End this process's child processes, then the process (status 128 + ``signum``), saying so on stderr."""
    import psutil

    from slmops.stack.process import stop_processes

    children = psutil.Process().children(recursive=True)
    survivors = stop_processes(children, timeout_s=CHILD_STOP_S)
    ended = f"; ended its child processes {', '.join(str(c.pid) for c in children)}" if children else ""
    left = f"; pids {survivors} survive SIGKILL: stop them by hand" if survivors else ""
    why = f" ({why})" if why else ""
    err_console.print(f"stopped by {signal.Signals(signum).name}{why}{ended}{left}", highlight=False, soft_wrap=True)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


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
