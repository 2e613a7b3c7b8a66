"""Every error slmops raises. Each says what was wrong, the offending value, and what to do.

Library code raises these; the CLI and the HTTP server turn them into one line
or a JSON body. Classes mix in the closest built-in so callers can also catch
``ValueError`` / ``LookupError`` / ``FileNotFoundError`` as usual.
"""

from __future__ import annotations

from collections.abc import Iterable


class SlmopsError(Exception):
    """Base class of every slmops error."""

    param: str | None = None  # the request field at fault, when known (the HTTP server reports it)


class ConfigError(SlmopsError, ValueError):
    """A config file or option is invalid. Raised when configs are parsed."""


class RecordError(SlmopsError, ValueError):
    """A runtime record (settings, manifest, model card, generation parameters) got invalid values. Its
    ``errors()`` lists them in pydantic's shape; the code that builds the record turns it into its own error."""

    def __init__(self, problems: list[dict], *, record: str) -> None:
        self.problems, self.record = problems, record
        super().__init__(f"invalid {record}: " + "; ".join(_problem_line(p) for p in problems))

    def errors(self) -> list[dict]:
        return list(self.problems)

    def error_count(self) -> int:
        return len(self.problems)


def _problem_line(problem: dict) -> str:
    name = ".".join(str(p) for p in problem["loc"]) or "value"
    if problem["type"] == "missing":
        return f"{name} is required"
    return f"{name}={problem['input']!r}: {problem['msg']}"


class CatalogError(ConfigError):
    """catalog.yaml is invalid; the message names the file, variant and field."""


class _PlainMessage:
    """Mixin for errors based on LookupError/KeyError, which would repr() the message."""

    args: tuple[object, ...]

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UsageError(SlmopsError, ValueError):
    """A function, command or option was called with invalid arguments (generation parameters have their own)."""


class UnknownVariantError(_PlainMessage, SlmopsError, LookupError):
    """A variant id is not in the catalog; the message suggests close ids."""


class UnknownTaskError(_PlainMessage, SlmopsError, LookupError):
    """A task name is not a row of the task table (slmops.tasks); the message lists the known ones."""


class UnknownPluginError(_PlainMessage, ConfigError, LookupError):
    """No exporter, fetch source or quantizer is registered under that name; the message lists those that are."""


class MissingResultError(SlmopsError, FileNotFoundError):
    """A stage's input (an upstream stage's result) is missing or unreadable; the message names the command."""


class FetchError(SlmopsError, RuntimeError):
    """A model could not be fetched (network, missing repo, gated repo, offline cache miss)."""


class IntegrityError(SlmopsError, ValueError):
    """A file's content does not match its recorded sha256, or a manifest is missing/invalid."""


class ExportError(SlmopsError, RuntimeError):
    """ONNX export failed or produced a graph that does not match PyTorch."""


class QuantizeError(SlmopsError, RuntimeError):
    """A quantization recipe cannot be applied to this model."""


class GateError(SlmopsError, RuntimeError):
    """A quality gate could not be evaluated (not: a candidate failing its gate, which is a result)."""


class BenchmarkError(SlmopsError, RuntimeError):
    """A benchmark subprocess failed or returned no result."""


class BuildLockError(SlmopsError, TimeoutError):
    """Another build holds the project's build lock and did not end within ``SLMOPS_BUILD_LOCK_WAIT_S``; the
    message names that build (pid, command, start time) and the locked folder."""


class BuildError(SlmopsError, RuntimeError):
    """A build ended with failed variants; the message names each one, the stage that failed and why."""


class RegistryError(SlmopsError, RuntimeError):
    """The MLflow registry has no such model/alias/version, or could not be written."""


class NoEligibleModelError(_PlainMessage, RegistryError, LookupError):
    """No registered model passes its gate and fits the use case's constraints."""


class StackError(SlmopsError, RuntimeError):
    """`slmops stack` could not start, stop or find a service (PostgreSQL, MLflow server, Prefect server); the
    message names the service and its log file."""


class GenerationParamsError(SlmopsError, ValueError):
    """A generation/embedding parameter is out of range; the message names it."""


class ContextLengthError(GenerationParamsError):
    """The prompt plus max_tokens does not fit the model's context length."""


class MemoryBudgetError(SlmopsError, MemoryError):
    """Loading the model would exceed the memory budget."""


class ModelBusyError(MemoryBudgetError):
    """A model cannot be loaded because the models that would have to be unloaded to make room are serving requests;
    ``retry_after`` says in how many seconds to try again."""

    retry_after = 5


class ModelLoadError(SlmopsError, RuntimeError):
    """An artifact folder cannot be opened by the runtime."""


class TaskMismatchError(SlmopsError, TypeError):
    """A model was asked for what its task does not do (e.g. embeddings from a causal LM)."""


class ServeRequestError(SlmopsError, ValueError):
    """The HTTP server refuses a request it could parse (the message names the field); raised by slmops.serve."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnsupportedParameterError(ServeRequestError):
    """A request field this server does not honour (``n`` > 1, ``tools``, a non-zero penalty...)."""


class RequestLimitError(ServeRequestError):
    """A request goes over one of the server's limits (prompt characters, list items)."""


class BodyTooLargeError(RequestLimitError):
    """A request body is larger than the server's ``max_body_bytes``; refused before it is parsed."""


class HostNotAllowedError(ServeRequestError):
    """A request's Host header is not one the server answers to (DNS-rebinding guard)."""


class QueueFullError(SlmopsError, RuntimeError):
    """The server's request queue is full (``SLMOPS_SERVE_MAX_QUEUE``); ``retry_after`` says in how many seconds
    to try again."""

    retry_after = 1


class RequestTimeoutError(SlmopsError, TimeoutError):
    """A request ran past the server's time limit (``SLMOPS_SERVE_REQUEST_TIMEOUT_S``) and was stopped."""


class AuthenticationError(SlmopsError, PermissionError):
    """A request to /v1/* lacks the server's API key (``Authorization: Bearer <key>``) or sends a wrong one."""


class ModelNotServedError(_PlainMessage, SlmopsError, LookupError):
    """A request names a model the server does not serve: no such alias or version, a version that has not
    passed its quality gate, or anything else (a folder path is never opened unless named at start-up)."""


class PyfuncInputError(SlmopsError, ValueError):
    """A pyfunc ``predict`` input does not fit the model's signature; the message names the expected columns."""


def describe_validation(exc: Exception, *, known: Iterable[str] = (), root: str = "value") -> str:
    """A pydantic ValidationError or a RecordError as '; '-joined 'name=value: message' parts; an unknown name is
    listed as such, with the ``known`` ones after it. ``root`` names an error of the whole object."""
    valid = f"; valid options: {', '.join(known)}" if known else ""
    parts = []
    for err in exc.errors():  # type: ignore[attr-defined]  # duck-typed: no pydantic import here
        name = ".".join(str(p) for p in err["loc"]) or root
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown option {name!r}{valid}")
        elif err["type"] == "missing":
            parts.append(f"{name} is required")
        else:
            parts.append(f"{name}={err.get('input')!r}: {err['msg']}")
    return "; ".join(parts)
