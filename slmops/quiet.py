"""Scoped silencing of third-party notices, so that a build prints only slmops's own output.

Nothing here mutes warnings or logging globally. Each helper hides one library's known chatter
around one call and restores everything when the ``with`` block ends: one named logger's level,
one message pattern on one logger, one ``warnings`` filter, one environment switch. The call
site says which notice it hides and why that notice is harmless there. Anything a helper was
not told about (a real warning, an error) still shows.

Imports nothing heavy: each helper imports its library only when entered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def logger_level(name: str, level: int) -> Iterator[None]:
    """Set the logger ``name`` (and so its children) to at least ``level`` for the block."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(previous)


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.regex = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.regex.search(record.getMessage())


@contextlib.contextmanager
def log_records_dropped(name: str, pattern: str) -> Iterator[None]:
    """Drop records logged *directly* on logger ``name`` ("root" for ``logging.warning()``) whose
    message matches ``pattern`` (a regex); every other record of that logger passes."""
    logger = logging.getLogger() if name == "root" else logging.getLogger(name)
    drop = _DropMatching(pattern)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@contextlib.contextmanager
def warnings_ignored(*filters: tuple[str, type[Warning]]) -> Iterator[None]:
    """Ignore the warnings matching each ``(message regex, category)`` for the block."""
    with warnings.catch_warnings():
        for message, category in filters:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


@contextlib.contextmanager
def mlflow_progress_bars_off() -> Iterator[None]:
    """Silence MLflow's tqdm artifact bars (MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR) for the block.

    Read by MLflow at every upload and download, so the switch is scoped to the block.
    """
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextlib.contextmanager
def mlflow_store_init_quiet() -> Iterator[None]:
    """Hide "Creating initial MLflow database tables..." (INFO, ``mlflow.store.db.utils``) while the
    SQLite store is opened: it only says a fresh local registry is being set up. Its warnings still show."""
    with logger_level("mlflow.store.db.utils", logging.WARNING):
        yield


# MLflow's fluent registration announces each step with print() (mlflow.utils.logging_utils.eprint),
# not through a logger, so no level hides them; these three lines only restate what slmops logs itself.
_MLFLOW_REGISTRY_ANNOUNCEMENTS = re.compile(
    r"^(Successfully registered model |Registered model .* already exists|Created version '\d+' of model )"
)


@contextlib.contextmanager
def mlflow_registration_quiet() -> Iterator[None]:
    """Hide MLflow's "Successfully registered model", "Registered model ... already exists" and
    "Created version ..." lines for the block; any other line MLflow prints still shows.

    Those lines are print() calls in ``mlflow.tracking._model_registry.fluent`` (through its
    ``eprint``); the block wraps that module's ``eprint`` in a filter and puts it back afterwards.
    """
    from mlflow.tracking._model_registry import fluent

    original = fluent.eprint

    def eprint(*args, **kwargs) -> None:
        if not (args and _MLFLOW_REGISTRY_ANNOUNCEMENTS.match(str(args[0]))):
            original(*args, **kwargs)

    fluent.eprint = eprint
    try:
        yield
    finally:
        fluent.eprint = original


@contextlib.contextmanager
def gguf_progress_bar_off() -> Iterator[None]:
    """Hide transformers' "Converting and de-quantizing GGUF tensors..." tqdm bar for the block.

    The GGUF loader calls ``tqdm`` directly, so ``transformers.utils.logging.disable_progress_bar()``
    does not reach it; the block gives that one module a disabled tqdm and restores it afterwards.
    The build shows its own progress for the conversion instead.
    """
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf

    original = gguf.tqdm
    gguf.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf.tqdm = original
