"""The HTTP server of today (``/v1/generate``, ``/v1/embed``, ``/v1/rerank``, ``/healthz``) over the tiny registry:
answers equal the runtime's, and every slmops error becomes a JSON error body with a fitting status."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from slmops.runtime import ModelPool
from slmops.runtime.base import RUNTIME_OVERHEAD_BYTES
from slmops.serve import create_app
from tests.conftest import apply_env

OPTIONS = {"max_tokens": 8, "temperature": 0.8, "top_p": 0.9, "seed": 3}
OVERHEAD_MB = RUNTIME_OVERHEAD_BYTES / 2**20


@pytest.fixture(autouse=True)
def _registry_env(tiny_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    apply_env(monkeypatch, tiny_registry[0])


@pytest.fixture()
def served():
    """A fresh app over its own pool; yields (HTTP client, pool)."""
    pool = ModelPool(max_memory_mb=4096)
    with TestClient(create_app(pool)) as client:
        yield client, pool
    pool.clear()


@pytest.fixture(scope="module")
def runtime(tiny_registry):
    """The reference: each alias opened with slmops.load."""
    from slmops import load
    from slmops.settings import get_settings

    mp = pytest.MonkeyPatch()
    try:
        apply_env(mp, tiny_registry[0])
        return {alias: load(alias) for alias in ("chat-test", "embed-test", "rerank-test")}
    finally:
        mp.undo()
        get_settings.cache_clear()


def _error(response) -> tuple[int, str, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    return response.status_code, body["error"]["type"], body["error"]["message"]


def test_healthz_reports_loaded_models_and_memory(served, runtime) -> None:
    client, pool = served
    assert client.get("/healthz").json() == {"status": "ok", "loaded": [], "used_mb": round(OVERHEAD_MB, 1)}
    assert client.post("/v1/generate", json={"model": "chat-test", "prompt": "hi", "max_tokens": 1}).status_code == 200
    assert client.post("/v1/embed", json={"model": "embed-test", "texts": ["x"]}).status_code == 200
    used = RUNTIME_OVERHEAD_BYTES + sum(pool.get(t).footprint_bytes for t in ("chat-test", "embed-test"))
    assert used > RUNTIME_OVERHEAD_BYTES
    assert client.get("/healthz").json() == {
        "status": "ok",
        "loaded": ["chat-test", "embed-test"],
        "used_mb": round(used / 2**20, 1),
    }


def test_generate_returns_the_runtimes_text(served, runtime) -> None:
    client, _ = served
    expected = runtime["chat-test"].generate("The sun", **OPTIONS)
    assert expected  # a real completion: the equality below is not between two empty strings
    response = client.post("/v1/generate", json={"model": "chat-test", "prompt": "The sun", **OPTIONS})
    assert response.status_code == 200
    assert response.json() == {"model": "chat-test", "variant": "tiny-llama", "text": expected}
    stop = expected[2:4]  # a stop string inside the text cuts the answer before it
    cut = client.post("/v1/generate", json={"model": "chat-test", "prompt": "The sun", "stop": [stop], **OPTIONS})
    assert cut.json()["text"] == expected[: expected.index(stop)]


def test_streaming_sends_the_same_text_as_events(served, runtime) -> None:
    client, _ = served
    body = {"model": "chat-test", "prompt": "The sun", "stream": True, **OPTIONS}
    with client.stream("POST", "/v1/generate", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) > 2  # several deltas, then the end marker
    deltas = [json.loads(e)["delta"] for e in events[:-1]]
    assert "".join(deltas) == runtime["chat-test"].generate("The sun", **OPTIONS)
    assert deltas == list(runtime["chat-test"].stream("The sun", **OPTIONS))


def test_chat_messages_and_batches(served, runtime) -> None:
    client, _ = served
    messages = [{"role": "user", "content": "hello there"}]
    chat = client.post("/v1/generate", json={"model": "chat-test", "messages": messages, **OPTIONS})
    assert chat.json()["text"] == runtime["chat-test"].chat(messages, **OPTIONS) != ""
    prompts = ["The sun", "Water boils at", "Once upon a time"]
    batch = client.post("/v1/generate", json={"model": "chat-test", "prompts": prompts, **OPTIONS})
    assert batch.json() == {
        "model": "chat-test",
        "variant": "tiny-llama",
        "texts": [runtime["chat-test"].generate(p, **OPTIONS) for p in prompts],
    }


def test_embed_returns_the_runtimes_unit_vectors(served, runtime) -> None:
    client, _ = served
    texts = ["a man is eating food", "a man is eating bread", "the stock market fell"]
    body = client.post("/v1/embed", json={"model": "embed-test", "texts": texts}).json()
    assert (body["model"], body["variant"], body["dim"]) == ("embed-test", "tiny-bert", 32)
    vectors = np.asarray(body["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(vectors, runtime["embed-test"].embed(texts), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_rerank_orders_documents_by_the_runtimes_scores(served, runtime) -> None:
    client, _ = served
    query = "what is the boiling point of water"
    docs = ["the stock market fell", "water boils at one hundred degrees", "plants use sunlight"]
    scores = runtime["rerank-test"].scores(query, docs)
    for model in ("rerank-test", "models:/slmops-cross-encoder@rerank-test"):  # an alias or a models:/ URI
        body = client.post("/v1/rerank", json={"model": model, "query": query, "documents": docs, "top_k": 2}).json()
        order = list(np.argsort(-scores)[:2])
        assert [r["index"] for r in body["results"]] == order
        assert [r["document"] for r in body["results"]] == [docs[i] for i in order]
        assert [r["score"] for r in body["results"]] == pytest.approx([float(scores[i]) for i in order], abs=1e-6)


def test_a_candidate_folder_is_served_too(served, tiny_registry, runtime) -> None:
    client, _ = served
    folder = str(tiny_registry[1]["embed-test"])
    body = client.post("/v1/embed", json={"model": folder, "texts": ["hello"]}).json()
    np.testing.assert_allclose(body["embeddings"], runtime["embed-test"].embed(["hello"]), atol=1e-6)


ERRORS = {  # case -> (path, body, (status, error type, part of the message))
    "unknown-alias": (
        "/v1/generate",
        {"model": "no-such-alias", "prompt": "x"},
        (404, "RegistryError", "no registered model has the alias 'no-such-alias'"),
    ),
    "unknown-version": (
        "/v1/embed",
        {"model": "models:/slmops-sentence-embedding/99", "texts": ["x"]},
        (404, "RegistryError", "models:/slmops-sentence-embedding/99 does not resolve"),
    ),
    "top_p": (
        "/v1/generate",
        {"model": "chat-test", "prompt": "x", "top_p": 2},
        (400, "GenerationParamsError", "top_p=2.0: Input should be less than or equal to 1"),
    ),
    "temperature-streamed": (
        "/v1/generate",
        {"model": "chat-test", "prompt": "x", "temperature": -1, "stream": True},
        (400, "GenerationParamsError", "temperature=-1.0: Input should be greater than or equal"),
    ),
    "context-length": (
        "/v1/generate",
        {"model": "chat-test", "prompt": "x", "max_tokens": 10_000},
        (400, "ContextLengthError", "max_tokens=10000 must be below the context length 256"),
    ),
    "no-prompt": (
        "/v1/generate",
        {"model": "chat-test"},
        (400, "GenerationParamsError", "pass exactly one of prompt= or messages="),
    ),
    "batch-streamed": (
        "/v1/generate",
        {"model": "chat-test", "prompts": ["x"], "stream": True},
        (400, "GenerationParamsError", "prompts= is a batch: pass it without prompt=, messages="),
    ),
    "embed-a-decoder": (
        "/v1/embed",
        {"model": "chat-test", "texts": ["x"]},
        (400, "TaskMismatchError", "model 'chat-test' is a causal-lm model and cannot embed"),
    ),
    "generate-fill-mask": (
        "/v1/generate",
        {"model": "fill-test", "prompt": "x"},
        (400, "TaskMismatchError", "model 'fill-test' is a fill-mask model and cannot stream"),
    ),
    "rerank-an-embedder": (
        "/v1/rerank",
        {"model": "embed-test", "query": "q", "documents": ["d"]},
        (400, "TaskMismatchError", "is a sentence-embedding model and cannot rerank"),
    ),
    "no-texts": (
        "/v1/embed",
        {"model": "embed-test", "texts": []},
        (400, "GenerationParamsError", "texts must be a non-empty list of strings, got []"),
    ),
    "typo": (
        "/v1/generate",
        {"model": "chat-test", "prompt": "x", "temprature": 1},
        (422, "RequestValidationError", "temprature: Extra inputs are not permitted (got 1)"),
    ),
    "top_k-0": (
        "/v1/rerank",
        {"model": "rerank-test", "query": "q", "documents": ["d"], "top_k": 0},
        (422, "RequestValidationError", "top_k: Input should be greater than or equal to 1 (got 0)"),
    ),
    "missing-field": ("/v1/embed", {"model": "embed-test"}, (422, "RequestValidationError", "texts: Field required")),
}


@pytest.mark.parametrize(("path", "body", "expected"), list(ERRORS.values()), ids=list(ERRORS))
def test_errors_are_json_bodies_with_fitting_statuses(served, path: str, body: dict, expected) -> None:
    client, _ = served
    status, kind, message = _error(client.post(path, json=body))
    assert (status, kind) == expected[:2], message
    assert expected[2] in message


def test_a_model_over_the_memory_budget_is_507() -> None:
    pool = ModelPool(max_memory_mb=OVERHEAD_MB + 0.001)
    with TestClient(create_app(pool)) as client:
        status, kind, message = _error(client.post("/v1/embed", json={"model": "embed-test", "texts": ["x"]}))
        assert (status, kind) == (507, "MemoryBudgetError")
        assert "'embed-test' needs about" in message and "max_memory_mb=96; raise it or pick a smaller model" in message
        assert client.get("/healthz").json()["loaded"] == []  # nothing half-loaded stays in the pool
