"""The serve app in process (FastAPI's TestClient) over the tiny registry: the pool behind it, its limits and
the error table; :mod:`tests.integration.test_openai_api` drives a real server with the openai client."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from slmops.errors import (
    AuthenticationError,
    ContextLengthError,
    IntegrityError,
    MemoryBudgetError,
    ModelNotServedError,
    RegistryError,
    TaskMismatchError,
)
from slmops.runtime import ModelPool
from slmops.runtime.base import RUNTIME_OVERHEAD_BYTES
from slmops.serve import ServeConfig, create_app
from slmops.serve.problems import exception_body
from tests.conftest import apply_env

OVERHEAD_MB = RUNTIME_OVERHEAD_BYTES / 2**20
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(autouse=True)
def _registry_env(tiny_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    apply_env(monkeypatch, tiny_registry[0])


def _app(pool: ModelPool, **options) -> TestClient:
    # TestClient sends "Host: testserver"; everything else as `slmops serve` sets it
    return TestClient(create_app(pool, ServeConfig.from_settings(allowed_hosts=("testserver",), **options)))


@pytest.fixture()
def served():
    pool = ModelPool(max_memory_mb=4096)
    with _app(pool) as client:
        yield client, pool
    pool.clear()


def _error(response) -> tuple[int, dict]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return response.status_code, body["error"]


def test_ready_reports_loaded_models_and_memory(served) -> None:
    client, pool = served
    assert client.get("/ready").json()["loaded"] == [] and client.get("/health").json() == {"status": "ok"}
    client.post("/v1/completions", json={"model": "chat-test", "prompt": "hi", "max_tokens": 1})
    client.post("/v1/embeddings", json={"model": "embed-test", "input": "x"})
    ready = client.get("/ready").json()
    assert len(ready["loaded"]) == 2 and all(t.startswith("models:/slmops-") for t in ready["loaded"])
    used = RUNTIME_OVERHEAD_BYTES + sum(pool.get(t).footprint_bytes for t in ready["loaded"])
    assert ready["used_mb"] == round(used / 2**20, 1) > round(OVERHEAD_MB, 1)


def test_a_model_over_the_memory_budget_is_507_and_says_no_more() -> None:
    pool = ModelPool(max_memory_mb=OVERHEAD_MB + 0.001)
    with _app(pool) as client:
        status, error = _error(client.post("/v1/embeddings", json={"model": "embed-test", "input": "x"}))
        assert (status, error["type"], error["code"]) == (507, "server_error", "insufficient_memory")
        assert error["message"] == "the model does not fit the server's memory budget"
        assert client.get("/ready").json()["loaded"] == []  # nothing half-loaded stays in the pool


def test_prompt_and_list_limits_are_checked_before_the_model_is_touched() -> None:
    pool = ModelPool(max_memory_mb=4096)
    with _app(pool, max_prompt_chars=10, max_items=2) as client:
        status, error = _error(client.post("/v1/completions", json={"model": "chat-test", "prompt": "x" * 11}))
        assert (status, error["code"], error["param"]) == (400, "limit_exceeded", "prompt")
        long_chat = {"model": "chat-test", "messages": [{"role": "user", "content": "y" * 11}]}
        assert _error(client.post("/v1/chat/completions", json=long_chat))[1]["param"] == "messages"
        three = {"model": "embed-test", "input": ["a", "b", "c"]}
        assert _error(client.post("/v1/embeddings", json=three))[1]["param"] == "input"
        rerank = {"model": "rerank-test", "query": "q", "documents": ["a", "b", "c"]}
        assert _error(client.post("/v1/rerank", json=rerank))[1]["param"] == "documents"
        assert pool.loaded() == []


def test_cors_is_off_by_default(served) -> None:
    client, _ = served
    response = client.get("/health", headers={"Origin": "https://app.example"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


ERRORS = {  # case -> (path, body, (status, code, part of the message))
    "top_p": (
        "/v1/chat/completions",
        {"model": "chat-test", "messages": MESSAGES, "top_p": 2},
        (400, "invalid_value", "top_p: Input should be less than or equal to 1 (got 2)"),
    ),
    "temperature-streamed": (
        "/v1/completions",
        {"model": "chat-test", "prompt": "x", "temperature": -1, "stream": True},
        (400, "invalid_value", "temperature: Input should be greater than or equal to 0"),
    ),
    "context-length": (
        "/v1/completions",
        {"model": "chat-test", "prompt": "x", "max_tokens": 300},
        (400, "context_length_exceeded", "this model's context length is 256 tokens"),
    ),
    "embed-a-decoder": (
        "/v1/embeddings",
        {"model": "chat-test", "input": ["x"]},
        (400, "model_task_mismatch", "model 'chat-test' is a causal-lm model and cannot embed"),
    ),
    "chat-with-fill-mask": (
        "/v1/chat/completions",
        {"model": "fill-test", "messages": MESSAGES},
        (400, "model_task_mismatch", "model 'fill-test' is a fill-mask model and cannot generate text"),
    ),
    "rerank-an-embedder": (
        "/v1/rerank",
        {"model": "embed-test", "query": "q", "documents": ["d"]},
        (400, "model_task_mismatch", "is a sentence-embedding model and cannot rerank"),
    ),
    "empty-input": (
        "/v1/embeddings",
        {"model": "embed-test", "input": []},
        (400, "invalid_value", "input: List should have at least 1 item"),
    ),
    "top_n-0": (
        "/v1/rerank",
        {"model": "rerank-test", "query": "q", "documents": ["d"], "top_n": 0},
        (400, "invalid_value", "top_n: Input should be greater than or equal to 1 (got 0)"),
    ),
    "dimensions": (
        "/v1/embeddings",
        {"model": "embed-test", "input": "x", "dimensions": 8},
        (400, "unsupported_parameter", "dimensions=8 is not supported; this model's embeddings have 32"),
    ),
    "suffix": (
        "/v1/completions",
        {"model": "chat-test", "prompt": "x", "suffix": "y"},
        (400, "unsupported_parameter", "suffix (insertion) is not supported"),
    ),
}


@pytest.mark.parametrize(("path", "body", "expected"), list(ERRORS.values()), ids=list(ERRORS))
def test_errors_are_openai_bodies_with_fitting_statuses(served, path: str, body: dict, expected) -> None:
    client, _ = served
    status, error = _error(client.post(path, json=body))
    assert (status, error["code"]) == expected[:2], error
    assert expected[2] in error["message"]


def test_the_api_key_is_checked_on_v1_only(tiny_registry) -> None:
    pool = ModelPool(max_memory_mb=4096)
    with _app(pool, api_key="k") as client:
        assert _error(client.get("/v1/models"))[0] == 401
        assert _error(client.get("/v1/models", headers={"Authorization": "Bearer x"}))[0] == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("exc", "status", "code", "public"),
    [
        (AuthenticationError("no key"), 401, "invalid_api_key", True),
        (ModelNotServedError("model 'x' is not a served model"), 404, "model_not_found", True),
        (ContextLengthError("too long"), 400, "context_length_exceeded", True),
        (TaskMismatchError("cannot embed"), 400, "model_task_mismatch", True),
        (MemoryBudgetError("/srv/models/x needs 9 GB"), 507, "insufficient_memory", False),
        (RegistryError("sqlite:////srv/mlruns/mlflow.db failed"), 503, "registry_unavailable", False),
        (IntegrityError("/srv/cache/x/model.onnx: sha256 mismatch"), 500, "model_integrity", False),
        (RuntimeError("/srv/secret"), 500, "internal_error", False),
    ],
)
def test_server_side_details_never_reach_the_client(exc, status, code, public) -> None:
    got_status, body = exception_body(exc)
    assert (got_status, body["error"]["code"]) == (status, code)
    assert (body["error"]["message"] == str(exc)) == public
    assert "/srv" not in body["error"]["message"]


def test_ready_says_503_while_a_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    gate, entered = threading.Event(), threading.Event()
    real_acquire = ModelPool.acquire

    def slow_acquire(self, target):  # the first load of a model, held open by the test
        entered.set()
        assert gate.wait(60), "the test never let the load finish"
        return real_acquire(self, target)

    monkeypatch.setattr(ModelPool, "acquire", slow_acquire)
    pool = ModelPool(max_memory_mb=4096)
    with _app(pool) as client:
        answer: list = []
        worker = threading.Thread(
            target=lambda: answer.append(
                client.post("/v1/completions", json={"model": "chat-test", "prompt": "hi", "max_tokens": 1})
            )
        )
        worker.start()
        assert entered.wait(60)
        loading = client.get("/ready")
        gate.set()
        worker.join(60)
        ready = client.get("/ready")
    pool.clear()
    assert loading.status_code == 503 and loading.json()["status"] == "loading"
    assert loading.json()["loading"][0].startswith("models:/slmops-causal-lm/")
    assert answer[0].status_code == 200 and ready.status_code == 200 and ready.json()["loading"] == []
