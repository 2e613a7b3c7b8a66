"""What guards the server before a handler runs: trusted Host headers, the body size limit, the API key.

Starlette's TrustedHostMiddleware answers a foreign host with a plain-text 400; the guard here does the
same check and answers in the OpenAI error shape, as every other refusal does.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Request

from slmops.errors import AuthenticationError, BodyTooLargeError, HostNotAllowedError
from slmops.serve.problems import exception_body, exception_response

Scope = dict[str, Any]


class RequestGuard:
    """ASGI middleware: refuse a request whose Host is not trusted, or whose body is over ``max_body_bytes``
    (by its Content-Length, or while it arrives), before anything parses it."""

    def __init__(self, app: Any, *, trusted_hosts: frozenset[str] | None, max_body_bytes: int) -> None:
        self.app, self.trusted_hosts, self.max_body_bytes = app, trusted_hosts, max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.trusted_hosts is not None and _host(headers.get("host", "")) not in self.trusted_hosts:
            await _refuse(HostNotAllowedError("the Host header names a host this server does not answer to"))(
                scope, receive, send
            )
            return
        too_large = BodyTooLargeError(
            f"the request body is larger than this server's limit of {self.max_body_bytes} bytes", param=None
        )
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _refuse(too_large)(scope, receive, send)
            return
        chunks, size = [], 0
        while True:  # read the whole (bounded) body now; the app then reads it from memory
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _refuse(too_large)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: the disconnect message, when it comes

        await self.app(scope, replay, send)


def _host(header: str) -> str:
    """The host of a Host header, without port or IPv6 brackets, lower-cased."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _refuse(exc: Exception) -> Any:
    return exception_response(exc)


class ApiKey:
    """A FastAPI dependency: with a key configured, every request must send ``Authorization: Bearer <key>``,
    compared in constant time."""

    def __init__(self, key: str | None) -> None:
        self.key = None if key is None else key.encode()

    def __call__(self, request: Request) -> None:
        if self.key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key):
            raise AuthenticationError("a valid API key is required: send the header 'Authorization: Bearer <key>'")


__all__ = ["ApiKey", "RequestGuard", "exception_body"]
