"""What the server tells about itself: Prometheus metrics on ``/metrics`` and one access-log line per request.

Each app has its own :class:`Metrics` (its own CollectorRegistry, not prometheus-client's global one), so
several apps in one process do not mix their counts. The access line goes to the ``slmops.serve.access``
logger as JSON: route, model, version, status, prompt/completion tokens, duration, finish_reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_logger = logging.getLogger("slmops.serve.access")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """The server's metrics; also the schedulers' observer (batch sizes, first-token and inter-token latency)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("slmops_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.duration = Histogram(
            "slmops_request_duration_seconds", "HTTP request duration", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "slmops_batch_size", "Requests decoded together per graph call", buckets=BATCH_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "slmops_time_to_first_token_seconds",
            "From a generation request's arrival in the queue to its first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "slmops_inter_token_latency_seconds",
            "Between two tokens of one generation request",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("slmops_tokens", "Tokens read (prompt) and generated (completion)", ["kind"], registry=r)

    def watch(self, collector: Collector) -> None:
        """Add a collector read at each scrape (queue depth, loaded models)."""
        self.registry.register(collector)

    # -- the schedulers' Observer ---------------------------------------------------------------
    def batch(self, rows: int, waiting: int) -> None:
        self.batch_size.observe(rows)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def next_token(self, seconds: float) -> None:
        self.itl.observe(seconds)


class Gauges(Collector):
    """Gauges computed at scrape time: ``(name, help, labels, read)`` where ``read()`` gives (label values, value)."""

    def __init__(self, *gauges: tuple[str, str, list[str], Callable[[], Iterable[tuple[list[str], float]]]]) -> None:
        self.gauges = gauges

    def collect(self) -> Iterable[Metric]:
        for name, text, labels, read in self.gauges:
            family = GaugeMetricFamily(name, text, labels=labels)
            for values, value in read():
                family.add_metric(values, value)
            yield family


def new_record() -> dict[str, Any]:
    """What a route fills in about its request (``request.state.access``) for the access line and the metrics."""
    return {"model": None, "version": None, "prompt_tokens": None, "completion_tokens": None, "finish_reason": None}


class AccessLog:
    """ASGI middleware: after each HTTP response (a stream's last byte included) one access line and the
    request metrics. Routes it does not know are counted under ``route="unmatched"`` (no label per URL)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, routes: Callable[[], set[str]]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        record = new_record()
        scope.setdefault("state", {})["access"] = record
        status, done = 500, False

        def finish() -> None:
            nonlocal done
            if done:
                return
            done = True
            seconds = time.perf_counter() - start
            route = scope["path"] if scope["path"] in self.routes() else "unmatched"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.duration.labels(route).observe(seconds)
            for kind in ("prompt", "completion"):
                if record[f"{kind}_tokens"]:
                    self.metrics.tokens.labels(kind).inc(record[f"{kind}_tokens"])
            line = {"route": route, "method": scope["method"], "status": status, **record}
            line["duration_ms"] = round(seconds * 1000, 1)
            access_logger.info("%s", json.dumps(line, ensure_ascii=True))

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finish()  # before the last byte leaves: a client that has its answer finds it counted
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            finish()  # a stream cut short by its client
