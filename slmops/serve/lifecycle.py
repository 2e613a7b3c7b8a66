"""A request's life in the event loop: server-sent events that stop when the client goes away, a watch on
the connection for JSON answers, and the time limit."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from slmops.runtime.open import expect
from slmops.serve.config import ServeConfig
from slmops.serve.models import Served, ServedModels
from slmops.serve.observe import Metrics
from slmops.serve.scheduler import Schedulers

M = TypeVar("M")


class EventStream(StreamingResponse):
    """Server-sent events that watch the connection whatever the ASGI spec version: when the client goes away the
    event generator is cancelled at once (not at its next event), and ``on_close`` runs however the stream ends."""

    def __init__(self, content: AsyncIterator[str], *, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, media_type="text/event-stream", **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client went away between two events
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            self.on_close()


@contextlib.asynccontextmanager
async def on_disconnect(request: Request, callback: Callable[[], None]) -> AsyncIterator[None]:
    """Call ``callback`` if the client disconnects while the block runs (the body must have been read)."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                callback()
                return

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


@dataclass
class ServeContext:
    """What a route needs besides its request: the served models, the options, the schedulers, the metrics."""

    models: ServedModels
    config: ServeConfig
    schedulers: Schedulers
    metrics: Metrics

    @contextlib.contextmanager
    def holding(self, name: str, kind: type[M], *, doing: str) -> Iterator[tuple[Served, M]]:
        """The served entry ``name`` resolves to and its model, held (not unloaded) during the block; raises
        TaskMismatchError when the model is not a ``kind``."""
        served = self.models.resolve(name)
        model = self.models.acquire(served)
        try:
            yield served, expect(model, kind, target=name, doing=doing)
        finally:
            self.models.release(model)

    def hold(self, name: str, kind: type[M], *, doing: str) -> tuple[Served, M, Callable[[], None]]:
        """As :meth:`holding`, for a hold that outlives a block (a stream): returns the release too, once-only."""
        served = self.models.resolve(name)
        model = self.models.acquire(served)
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self.models.release(model)

        try:
            return served, expect(model, kind, target=name, doing=doing), release
        except BaseException:
            release()
            raise
