"""Continuous batching: one scheduler thread per loaded text model decodes every active request together.

Between two decode steps waiting requests join (each prompt runs alone first, as it would without the
scheduler) and finished, cancelled or timed-out ones leave; each step is ONE graph call for all rows
(:mod:`slmops.serve.batching`). Each request keeps its own sampler (and seed), end and stop tokens, stop
strings and max_tokens, and gets its text deltas from its own tokens, so a greedy request gives the same
text alone or in a batch (up to the graph's own batch-size numerics; see the README).

Requests are bounded: at most ``max_batch`` decode together and ``max_queue`` wait; one more is refused with
QueueFullError (HTTP 429).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from slmops.errors import QueueFullError, RequestTimeoutError
from slmops.runtime.decoder import TextDeltas, TextModel
from slmops.runtime.params import GenerationParams
from slmops.runtime.sampling import Sampler
from slmops.serve.batching import BATCHES

logger = logging.getLogger(__name__)

IDLE_CHECK_S = 1.0  # how often an idle scheduler looks whether its model was unloaded


@dataclass(frozen=True)
class Step:
    """One event of a request: a token and the text it completes, or the end (``finish`` or ``error``)."""

    text: str = ""
    token: int | None = None
    finish: str | None = None
    error: BaseException | None = None


class Observer(Protocol):
    """What the scheduler reports (the server's metrics)."""

    def batch(self, rows: int, waiting: int) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def next_token(self, seconds: float) -> None: ...


class GenerationRequest:
    """A request in a scheduler: its events come through :meth:`events` (threads) or :meth:`aevents` (asyncio)."""

    def __init__(
        self,
        ids: list[int],
        params: GenerationParams,
        *,
        deadline: float | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.ids, self.params, self.deadline = ids, params, deadline
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self.submitted = time.monotonic()
        self.cancelled = threading.Event()
        self._loop = loop
        self._async: asyncio.Queue[Step] | None = asyncio.Queue() if loop is not None else None
        self._sync: queue.Queue[Step] = queue.Queue()

    @property
    def prompt_tokens(self) -> int:
        return len(self.ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    def cancel(self) -> None:
        """Stop generating for this request (its client went away); the scheduler drops it before its next step."""
        self.cancelled.set()

    def _deliver(self, step: Step) -> None:
        if self._async is None:
            self._sync.put(step)
            return
        try:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._async.put_nowait, step)
        except RuntimeError:  # the event loop is gone: nobody is listening
            self.cancel()

    def events(self, *, timeout: float | None = None) -> Iterator[Step]:
        """The request's steps, the last one with ``finish`` or ``error`` (threads; ``loop=None`` requests)."""
        while True:
            step = self._sync.get(timeout=timeout)
            yield step
            if step.finish is not None or step.error is not None:
                return

    async def aevents(self) -> AsyncIterator[Step]:
        """As :meth:`events`, awaited (requests submitted with a ``loop``)."""
        assert self._async is not None, "submit(loop=...) to await the events"
        while True:
            step = await self._async.get()
            yield step
            if step.finish is not None or step.error is not None:
                return


@dataclass
class _Row:
    request: GenerationRequest
    sampler: Sampler
    end: set[int]
    deltas: TextDeltas
    seen: np.ndarray
    capacity: int
    pending: int = -1  # the last token, fed at the next step
    last: float = field(default_factory=time.monotonic)


class BatchScheduler:
    """The decode loop of one text model (a daemon thread started by :meth:`start`)."""

    def __init__(
        self, model: TextModel, *, max_batch: int = 16, max_queue: int = 64, observer: Observer | None = None
    ) -> None:
        self.model = model
        self.max_batch, self.max_queue = max_batch, max_queue
        self.observer = observer
        self._waiting: deque[GenerationRequest] = deque()
        self._rows: list[_Row] = []
        self._joining = 0  # taken from the queue, prompt running: counted as active
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"slmops-batch-{model.card.variant}", daemon=True)

    def start(self) -> BatchScheduler:
        self._thread.start()
        return self

    def stop(self, *, timeout: float = 10.0) -> None:
        """End the thread after failing whatever is still queued or active."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def active(self) -> int:
        """Requests decoding now (their prompt's pass included)."""
        return len(self._rows) + self._joining

    @property
    def waiting(self) -> int:
        """Requests queued for a batch slot."""
        return len(self._waiting)

    def submit(
        self,
        ids: list[int],
        params: GenerationParams,
        *,
        timeout_s: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> GenerationRequest:
        """Queue the prompt ``ids`` (fitted to the context already). Raises QueueFullError when the queue is full."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        request = GenerationRequest(ids, params, deadline=deadline, loop=loop)
        with self._cond:
            if self._stopping:
                raise QueueFullError("the server is shutting down")
            if self.active + len(self._waiting) >= self.max_batch + self.max_queue:
                raise QueueFullError(
                    f"the server is busy: {self.active} requests are generating and {len(self._waiting)} "
                    f"are waiting for this model; try again shortly"
                )
            self._waiting.append(request)
            self._cond.notify()
        return request

    # -- the thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        batch = BATCHES[self.model.card.graph](self.model)
        while True:
            with self._cond:
                while not self._waiting and not self._rows and not self._stopping:
                    if not self._cond.wait(IDLE_CHECK_S) and not self.model.is_loaded:
                        return  # unloaded: nothing can come any more
                if self._stopping:
                    self._fail_all(batch, QueueFullError("the server is shutting down"))
                    return
                room = self.max_batch - len(self._rows)
                joining = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                self._joining = len(joining)
            try:
                for request in joining:
                    self._join(batch, request)
                    with self._cond:
                        self._joining -= 1
                self._leave(batch)
                if self._rows:
                    self._step(batch)
            except Exception as exc:  # a failed graph call fails the requests in it, not the scheduler
                logger.exception("decode step of %s failed", self.model.card.variant)
                for request in joining:
                    request._deliver(Step(error=exc))  # those that had joined get it twice: the first one ends them
                self._fail_all(batch, exc)
                batch = BATCHES[self.model.card.graph](self.model)

    def _join(self, batch: Any, request: GenerationRequest) -> None:
        if self._ended(request):
            return
        params = request.params
        end = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.model.card.eos_token_ids))
        capacity = len(request.ids) + params.max_tokens
        logits, state = batch.prefill(request.ids, capacity)
        row = _Row(
            request,
            Sampler(params),
            end,
            TextDeltas(self.model.tokenizer, params.stop),
            np.asarray(request.ids),
            capacity,
        )
        if self.observer:
            self.observer.first_token(time.monotonic() - request.submitted)
        if self._emit(row, logits):
            with self._cond:
                self._rows.append(row)
            batch.add(state, capacity)

    def _leave(self, batch: Any) -> None:
        keep = [i for i, row in enumerate(self._rows) if not self._ended(row.request)]
        if len(keep) < len(self._rows):
            with self._cond:
                self._rows = [self._rows[i] for i in keep]
            batch.keep(keep)

    def _step(self, batch: Any) -> None:
        if self.observer:
            self.observer.batch(len(self._rows), len(self._waiting))
        logits = batch.step(np.asarray([row.pending for row in self._rows], dtype=np.int64))
        now = time.monotonic()
        keep = []
        for i, row in enumerate(self._rows):
            if self.observer:
                self.observer.next_token(now - row.last)
            row.last = now
            if self._emit(row, logits[i]):
                keep.append(i)
        if len(keep) < len(self._rows):
            with self._cond:
                self._rows = [self._rows[i] for i in keep]
            batch.keep(keep)

    def _emit(self, row: _Row, logits: np.ndarray) -> bool:
        """Sample the row's next token and send it; whether the row goes on (its token is fed next step)."""
        request = row.request
        token = row.sampler(logits, row.seen)
        if token in row.end:
            return self._finish(row, "stop")
        request.token_ids.append(token)
        request._deliver(Step(row.deltas.push(token), token))
        if row.deltas.stopped:
            return self._finish(row, "stop")
        if len(request.token_ids) == request.params.max_tokens:
            return self._finish(row, "length")
        row.seen = np.append(row.seen, token)
        row.pending = token
        return True

    def _finish(self, row: _Row, reason: str) -> bool:
        tail = row.deltas.flush()
        row.request.finish_reason = reason
        row.request._deliver(Step(tail, finish=reason))
        return False

    def _ended(self, request: GenerationRequest) -> bool:
        """Whether a request is cancelled or past its deadline (then it is told so)."""
        if request.cancelled.is_set():
            request._deliver(Step(error=RequestCancelled()))
            return True
        if request.deadline is not None and time.monotonic() > request.deadline:
            request._deliver(Step(error=RequestTimeoutError("the request ran past the server's time limit")))
            return True
        return False

    def _fail_all(self, batch: Any, exc: BaseException) -> None:
        with self._cond:
            requests = [row.request for row in self._rows] + list(self._waiting)
            self._rows, self._waiting, self._joining = [], deque(), 0
        for request in requests:
            request._deliver(Step(error=exc))


class RequestCancelled(Exception):
    """The request was cancelled by its client (delivered to nobody who cares, but it ends the events)."""


class Schedulers:
    """One :class:`BatchScheduler` per loaded text model, started on its first request; a scheduler whose model
    was unloaded ends by itself and a new one starts if the model is loaded again."""

    def __init__(self, *, max_batch: int, max_queue: int, observer: Observer | None = None) -> None:
        self.max_batch, self.max_queue, self.observer = max_batch, max_queue, observer
        self._running: dict[int, BatchScheduler] = {}
        self._lock = threading.Lock()

    def for_model(self, model: TextModel) -> BatchScheduler:
        with self._lock:
            self._running = {k: s for k, s in self._running.items() if s.alive}
            scheduler = self._running.get(id(model))
            if scheduler is None or scheduler.model is not model:
                scheduler = BatchScheduler(
                    model, max_batch=self.max_batch, max_queue=self.max_queue, observer=self.observer
                ).start()
                self._running[id(model)] = scheduler
            return scheduler

    def running(self) -> list[BatchScheduler]:
        with self._lock:
            return [s for s in self._running.values() if s.alive]

    def stop(self) -> None:
        """Stop every scheduler (server shutdown): queued and active requests end with an error."""
        for scheduler in self.running():
            scheduler.stop()
