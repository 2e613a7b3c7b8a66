"""``slmops serve`` under load, over HTTP against a real uvicorn server running the app in this process (so a test
can slow the model down and look at its schedulers): concurrent requests are batched and answer what each
gets alone, a full queue is a 429, a time limit a 504, a client that goes away stops its work, a model in use is
never unloaded, /health answers while requests queue, and /metrics and the access log count what happened.

The tiny model decodes a token in well under a millisecond, too fast for a client to close a stream mid-way;
:class:`SlowPool` adds a fixed delay to each graph call, as a real model's step would take."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import uvicorn

from slmops.runtime.pool import ModelPool
from slmops.serve import ServeConfig, create_app
from tests.conftest import apply_env
from tests.support.process import free_port

MESSAGES = [{"role": "user", "content": "hello there"}]
WAIT_S = 60.0  # bound on every wait
PROMPTS = ["The sun", "Water boils at one hundred degrees and", "a", "Once upon a time", "héllo wörld", "The cat"]


class SlowPool(ModelPool):
    """A pool whose text models sleep ``delay_s`` before each graph call."""

    def __init__(self, *, delay_s: float, **options) -> None:
        super().__init__(**options)
        self.delay_s = delay_s

    def get(self, target: str):
        model = super().get(target)
        graph = getattr(model, "graph", None)
        if graph is not None and not hasattr(graph, "slowed"):
            forward = graph.forward

            def slow(*args, **kwargs):
                time.sleep(self.delay_s)
                return forward(*args, **kwargs)

            graph.forward, graph.slowed = slow, True
        return model


class Server:
    """uvicorn serving ``app`` on a free loopback port in a thread; stopped (and joined) at exit."""

    def __init__(self, app) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + WAIT_S
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    @property
    def ctx(self):
        return self.app.state.ctx

    def active(self) -> int:
        return sum(s.active + s.waiting for s in self.ctx.schedulers.running())

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=WAIT_S)


@pytest.fixture(autouse=True)
def _registry_env(tiny_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.settings import get_settings

    apply_env(monkeypatch, tiny_registry[0])
    get_settings.cache_clear()


def serve(pool: ModelPool | None = None, **options) -> Server:
    pool = pool or ModelPool(max_memory_mb=2048)
    return Server(create_app(pool, ServeConfig.from_settings(**options)))


@pytest.fixture(scope="module")
def reference(tiny_registry):
    """chat-test opened with slmops.load in this process: what each request gets alone."""
    from slmops import load
    from slmops.settings import get_settings

    mp = pytest.MonkeyPatch()
    try:
        apply_env(mp, tiny_registry[0])
        get_settings.cache_clear()
        return load("chat-test")
    finally:
        mp.undo()
        get_settings.cache_clear()


def _chat(client: openai.OpenAI, content: str, **options) -> str:
    reply = client.chat.completions.create(
        model="chat-test", messages=[{"role": "user", "content": content}], **options
    )
    return reply.choices[0].message.content


def _wait_idle(server: Server) -> None:
    deadline = time.monotonic() + WAIT_S
    while server.active():
        assert time.monotonic() < deadline, f"{server.active()} requests still in the schedulers"
        time.sleep(0.02)


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# ------------------------------------------------------------------------------------------------ batching
def test_concurrent_greedy_requests_answer_what_each_gets_alone(reference) -> None:
    options = {"max_tokens": 24, "temperature": 0.0}
    alone = [reference.chat([{"role": "user", "content": p}], **options) for p in PROMPTS * 2]
    with serve(SlowPool(delay_s=0.005, max_memory_mb=2048), max_batch=8) as server:
        client = server.client()
        with ThreadPoolExecutor(len(alone)) as pool:
            answers = list(pool.map(lambda p: _chat(client, p, **options), PROMPTS * 2))
        metrics = httpx.get(f"{server.url}/metrics", timeout=WAIT_S).text
    assert answers == alone and len(set(alone)) > 1
    assert _metric(metrics, "slmops_requests_total", route="/v1/chat/completions", status="200") == len(alone)
    assert _metric(metrics, "slmops_time_to_first_token_seconds_count") == len(alone)
    steps = _metric(metrics, "slmops_batch_size_count")
    rows = _metric(metrics, "slmops_batch_size_sum")
    assert steps > 0 and rows / steps <= 8  # never more than max_batch rows per graph call


def test_a_full_queue_is_429_with_retry_after() -> None:
    with serve(SlowPool(delay_s=0.02, max_memory_mb=2048), max_batch=1, max_queue=0) as server:
        client = server.client()
        with client.chat.completions.create(model="chat-test", messages=MESSAGES, max_tokens=200, stream=True) as busy:
            next(iter(busy))  # decoding now, in the only slot
            with pytest.raises(openai.RateLimitError) as refused:
                _chat(client, "hi", max_tokens=4)
        _wait_idle(server)
        assert _chat(client, "hi", max_tokens=4, temperature=0.0) is not None  # room again
    error = refused.value.body
    assert refused.value.status_code == 429 and error["code"] == "queue_full" and error["type"] == "rate_limit_error"
    assert int(refused.value.response.headers["retry-after"]) >= 1


def test_a_request_past_the_time_limit_is_504() -> None:
    with serve(SlowPool(delay_s=0.02, max_memory_mb=2048), request_timeout_s=0.3) as server:
        response = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "chat-test", "messages": MESSAGES, "max_tokens": 200},
            timeout=WAIT_S,
        )
        _wait_idle(server)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"


# ------------------------------------------------------------------------------------------------ cancellation
def test_a_client_closing_a_stream_stops_its_generation(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="slmops.serve.access")
    with serve(SlowPool(delay_s=0.02, max_memory_mb=2048)) as server:
        with httpx.Client(timeout=WAIT_S) as http:
            body = {"model": "chat-test", "messages": MESSAGES, "max_tokens": 200, "stream": True}
            with http.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
                lines = response.iter_lines()
                assert next(lines).startswith("data: ")  # the role chunk
                assert server.active() == 1
            # the connection is closed here, 200 tokens x 20 ms before the stream would have ended
        _wait_idle(server)
        assert server.ctx.models.pool.in_use(server.ctx.models.pool.loaded()[0]) == 0
    line = _access_lines(caplog)[-1]
    assert line["route"] == "/v1/chat/completions" and line["finish_reason"] == "cancelled"
    assert line["completion_tokens"] < 200


def test_a_client_leaving_a_json_request_stops_its_generation(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="slmops.serve.access")
    with serve(SlowPool(delay_s=0.02, max_memory_mb=2048)) as server:
        body = {"model": "chat-test", "messages": MESSAGES, "max_tokens": 200}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=0.5)
        _wait_idle(server)
    line = _access_lines(caplog)[-1]
    assert line["finish_reason"] == "cancelled" and line["completion_tokens"] < 200


def test_an_abandoned_embedding_request_stops_between_chunks(tiny_registry, caplog) -> None:
    """Embedding 256 texts in chunks of 32, each chunk slowed to 0.2 s: the client leaves after the first."""
    caplog.set_level(logging.INFO, logger="slmops.serve.access")
    calls = []
    with serve() as server:
        model = server.ctx.models.pool.get(server.ctx.models.resolve("embed-test").target)
        embed = model.embed

        def slow_embed(texts, **options):
            calls.append(len(texts))
            time.sleep(0.2)
            return embed(texts, **options)

        model.embed = slow_embed
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{server.url}/v1/embeddings", json={"model": "embed-test", "input": ["a text"] * 256}, timeout=0.3
            )
        deadline = time.monotonic() + WAIT_S
        while not _access_lines(caplog):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert len(calls) < 256 // 32  # it stopped before the last chunk
    assert _access_lines(caplog)[-1]["finish_reason"] == "cancelled"


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "slmops.serve.access"]


# ------------------------------------------------------------------------------------------------ eviction
def test_a_model_in_use_is_not_unloaded_for_another(tiny_registry, reference) -> None:
    """A budget that holds one model at a time: while chat-test streams, embed-test gets a 503 model_busy and the
    stream finishes whole; once it ended, embed-test loads in its place."""
    from slmops.runtime.base import RUNTIME_OVERHEAD_BYTES, weights_bytes
    from slmops.runtime.card import read_model_card

    sizes = [
        weights_bytes(f, read_model_card(f)) for f in (tiny_registry[1]["chat-test"], tiny_registry[1]["embed-test"])
    ]
    budget_mb = (RUNTIME_OVERHEAD_BYTES + max(sizes) + min(sizes) // 2) / 2**20
    reference_text = reference.chat(MESSAGES, max_tokens=60, temperature=0.0)
    with serve(SlowPool(delay_s=0.01, max_memory_mb=budget_mb)) as server:
        client = server.client()
        text = ""
        with client.chat.completions.create(
            model="chat-test", messages=MESSAGES, max_tokens=60, temperature=0.0, stream=True
        ) as stream:
            chunks = iter(stream)
            text += next(chunks).choices[0].delta.content or ""
            with pytest.raises(openai.InternalServerError) as busy:
                client.embeddings.create(model="embed-test", input=["a sentence"])
            text += "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        _wait_idle(server)
        vectors = client.embeddings.create(model="embed-test", input=["a sentence"])
        loaded = server.ctx.models.pool.loaded()
        embed_target = server.ctx.models.resolve("embed-test").target
    assert busy.value.status_code == 503 and busy.value.body["code"] == "model_busy"
    assert "retry-after" in busy.value.response.headers
    assert text == reference_text and len(vectors.data) == 1 and loaded == [embed_target]


# ------------------------------------------------------------------------------------------------ health, metrics
def test_health_answers_while_requests_queue() -> None:
    with serve(SlowPool(delay_s=0.02, max_memory_mb=2048), max_batch=1, max_queue=32) as server:
        client = server.client()
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(_chat, client, "hi", max_tokens=100) for _ in range(12)]
            deadline = time.monotonic() + WAIT_S
            while server.active() < 12:  # every request is in the scheduler: one decoding, eleven queued
                assert time.monotonic() < deadline and not any(f.done() for f in futures)
                time.sleep(0.01)
            health = httpx.get(f"{server.url}/health", timeout=2.0)
            ready = httpx.get(f"{server.url}/ready", timeout=2.0).json()
            metrics = httpx.get(f"{server.url}/metrics", timeout=2.0).text
            for f in futures:
                f.cancel()
        _wait_idle(server)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready["active"] == 1 and ready["waiting"] == 11
    assert _metric(metrics, "slmops_queue_depth") == 11 and _metric(metrics, "slmops_active_requests") == 1


def test_metrics_and_access_lines_count_each_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="slmops.serve.access")
    with serve() as server:
        client = server.client()
        reply = client.chat.completions.create(model="chat-test", messages=MESSAGES, max_tokens=5, temperature=0.0)
        client.embeddings.create(model="embed-test", input=["a", "b"])
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=MESSAGES)
        httpx.get(f"{server.url}/no/such/route", timeout=WAIT_S)
        metrics = httpx.get(f"{server.url}/metrics", timeout=WAIT_S).text
    assert _metric(metrics, "slmops_requests_total", route="/v1/chat/completions", status="200") == 1
    assert _metric(metrics, "slmops_requests_total", route="/v1/chat/completions", status="404") == 1
    assert _metric(metrics, "slmops_requests_total", route="/v1/embeddings", status="200") == 1
    assert _metric(metrics, "slmops_requests_total", route="unmatched", status="404") == 1
    assert _metric(metrics, "slmops_tokens_total", kind="completion") == reply.usage.completion_tokens
    version = reply.system_fingerprint.split(":")[0].split("/")[1]
    name = reply.system_fingerprint.split("/")[0]
    target = f"models:/{name}/{version}"
    assert (
        f'slmops_loaded_model_requests{{registered_model="{name}",target="{target}",version="{version}"}} 0.0'
        in metrics
    )
    lines = _access_lines(caplog)
    chat = lines[0]
    assert chat == {
        "route": "/v1/chat/completions",
        "method": "POST",
        "status": 200,
        "model": name,
        "version": reply.system_fingerprint,
        "prompt_tokens": reply.usage.prompt_tokens,
        "completion_tokens": reply.usage.completion_tokens,
        "finish_reason": reply.choices[0].finish_reason,
        "duration_ms": chat["duration_ms"],
    }
    assert [(line["route"], line["status"]) for line in lines] == [
        ("/v1/chat/completions", 200),
        ("/v1/embeddings", 200),
        ("/v1/chat/completions", 404),
        ("unmatched", 404),
        ("/metrics", 200),  # its own line is written as its last byte leaves
    ]
