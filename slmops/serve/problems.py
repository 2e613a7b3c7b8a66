"""Errors as HTTP answers in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, for every 4xx/5xx.

A client's mistake gets its own message (it names only what the request sent); a server-side failure gets a
fixed message, and the detail (which may name files or the registry's location) goes to the log only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from slmops.errors import (
    AuthenticationError,
    BodyTooLargeError,
    ContextLengthError,
    GenerationParamsError,
    HostNotAllowedError,
    IntegrityError,
    MemoryBudgetError,
    ModelBusyError,
    ModelLoadError,
    ModelNotServedError,
    QueueFullError,
    RegistryError,
    RequestLimitError,
    RequestTimeoutError,
    SlmopsError,
    TaskMismatchError,
    UnsupportedParameterError,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """How one kind of error is answered. ``message`` None: the error's own text (a client error's)."""

    status: int
    type: str
    code: str
    message: str | None = None


INVALID = "invalid_request_error"
SERVER = "server_error"

# error class -> answer, most specific first (the README's error table is this one)
PROBLEMS: tuple[tuple[type[Exception], Problem], ...] = (
    (AuthenticationError, Problem(401, "authentication_error", "invalid_api_key")),
    (ModelNotServedError, Problem(404, INVALID, "model_not_found")),
    (BodyTooLargeError, Problem(413, INVALID, "request_too_large")),
    (HostNotAllowedError, Problem(400, INVALID, "invalid_host")),
    (UnsupportedParameterError, Problem(400, INVALID, "unsupported_parameter")),
    (RequestLimitError, Problem(400, INVALID, "limit_exceeded")),
    (ContextLengthError, Problem(400, INVALID, "context_length_exceeded")),
    (GenerationParamsError, Problem(400, INVALID, "invalid_value")),
    (TaskMismatchError, Problem(400, INVALID, "model_task_mismatch")),
    (QueueFullError, Problem(429, "rate_limit_error", "queue_full")),
    (
        ModelBusyError,
        Problem(503, SERVER, "model_busy", "the models that would make room for this one are serving requests; retry"),
    ),
    (RequestTimeoutError, Problem(504, SERVER, "timeout", "the request ran past the server's time limit")),
    (
        MemoryBudgetError,
        Problem(507, SERVER, "insufficient_memory", "the model does not fit the server's memory budget"),
    ),
    (RegistryError, Problem(503, SERVER, "registry_unavailable", "the model registry cannot be read; try again")),
    (IntegrityError, Problem(500, SERVER, "model_integrity", "the model's files failed verification")),
    (ModelLoadError, Problem(500, SERVER, "model_load_failed", "the model cannot be opened")),
    (SlmopsError, Problem(500, SERVER, "internal_error", "internal error; the server log has the details")),
    (Exception, Problem(500, SERVER, "internal_error", "internal error; the server log has the details")),
)

# statuses Starlette raises itself (unknown route, wrong method) -> code
HTTP_CODES = {404: "unknown_url", 405: "method_not_allowed"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every 4xx/5xx body."""

    error: ErrorDetail


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status it may answer with the error body."""
    return {s: {"model": ErrorBody, "description": DESCRIPTIONS.get(s, "error")} for s in statuses}


DESCRIPTIONS = {
    400: "invalid request (a field, a limit, an unsupported option, a foreign Host)",
    401: "missing or wrong API key",
    404: "the model is not served, or no such route",
    413: "the body is larger than the server's limit",
    500: "server-side failure",
    429: "the server's queue is full; retry after the Retry-After header's seconds",
    503: "the model registry cannot be read, or the models that would make room are busy (Retry-After)",
    504: "the request ran past the server's time limit",
    507: "the model does not fit the memory budget",
}


class ErrorResponse(JSONResponse):
    """JSON with ASCII escapes: a message quoting a request's odd characters (a lone surrogate) still encodes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_body(status: int, kind: str, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int, kind: str, message: str, *, param: str | None = None, code: str | None = None
) -> ErrorResponse:
    return ErrorResponse(status_code=status, content=error_body(status, kind, message, param=param, code=code))


def problem_for(exc: Exception) -> Problem:
    return next(problem for cls, problem in PROBLEMS if isinstance(exc, cls))


def exception_body(exc: Exception) -> tuple[int, dict]:
    """(status, body) for an exception; server-side details are logged here, never sent."""
    problem = problem_for(exc)
    if problem.message is not None:
        logger.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=not isinstance(exc, SlmopsError))
    message = problem.message if problem.message is not None else str(exc)
    param = getattr(exc, "param", None)
    return problem.status, error_body(problem.status, problem.type, message, param=param, code=problem.code)


def exception_response(exc: Exception) -> ErrorResponse:
    """The error answer; a ``retry_after`` on the error (a full queue, a busy model) becomes ``Retry-After``."""
    status, body = exception_body(exc)
    retry = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry)} if retry is not None else None
    return ErrorResponse(status_code=status, content=body, headers=headers)
