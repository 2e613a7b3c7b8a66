"""``slmops serve`` as an OpenAI-compatible server, driven by the official ``openai`` client (and plain HTTP)
against a real server process over the tiny registry: answers equal the runtime's, only gated registered
versions and named folders are served, and every refusal is a 4xx in OpenAI's error shape."""

from __future__ import annotations

import base64
import json
import os
import shutil

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import REPO_ROOT, UNSET, apply_env
from tests.support.slmopsserver import SlmopsServer

KEY = "test-key-0123456789"
ORIGIN = "https://app.example"
MAX_BODY = 64 * 1024
SAMPLED = {"max_tokens": 8, "temperature": 0.8, "top_p": 0.9, "seed": 3}
GREEDY = {"max_tokens": 8, "temperature": 0.0}


@pytest.fixture(autouse=True)
def _registry_env(tiny_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    apply_env(monkeypatch, tiny_registry[0])


@pytest.fixture(scope="module")
def failed_version(tiny_registry, tmp_path_factory) -> tuple[str, str]:
    """A copy of the tiny registry with one more causal-lm version whose gate failed, under the alias
    ``failed-test``. Returns (its mlruns folder, its models:/ URI)."""
    from slmops.names import TAG_GATE, registered_model_name
    from slmops.runtime.registry import connect
    from slmops.settings import Settings, get_settings

    env = tiny_registry[0]
    mlruns = tmp_path_factory.mktemp("served-registry") / "mlruns"  # a copy of the whole store: slmops re-roots
    shutil.copytree(env["SLMOPS_MLRUNS_DIR"], mlruns)  # a copied store's paths into it, where its artifacts must be
    mp = pytest.MonkeyPatch()
    try:
        apply_env(mp, {**env, "SLMOPS_MLRUNS_DIR": str(mlruns)})
        client = connect(Settings(mlruns_dir=mlruns))
        name = registered_model_name("causal-lm")
        good = client.get_model_version_by_alias(name, "chat-test")
        bad = client.create_model_version(
            name, source=good.source, run_id=good.run_id, tags={**good.tags, TAG_GATE: "failed"}
        )
        client.set_registered_model_alias(name, "failed-test", bad.version)
    finally:
        mp.undo()
        get_settings.cache_clear()
    return str(mlruns), f"models:/{name}/{bad.version}"


def _server_env(registry_env: dict[str, str], mlruns: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env |= registry_env | {
        "SLMOPS_MLRUNS_DIR": mlruns,
        "SLMOPS_API_KEY": KEY,
        "SLMOPS_SERVE_MAX_BODY_BYTES": str(MAX_BODY),
        "SLMOPS_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return env


@pytest.fixture(scope="module")
def server(tiny_registry, failed_version, tmp_path_factory):
    """``slmops serve`` with an API key, a CORS origin, a small body limit and one named folder."""
    folder = tiny_registry[1]["embed-test"]
    args = ["--model", f"local-embed={folder}", "--cors-origin", ORIGIN]
    root = tmp_path_factory.mktemp("serve")
    with SlmopsServer(root, env=_server_env(tiny_registry[0], failed_version[0]), args=args) as running:
        yield running


@pytest.fixture()
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def runtime(tiny_registry):
    """The reference: each alias opened with slmops.load in this process."""
    from slmops import load
    from slmops.settings import get_settings

    mp = pytest.MonkeyPatch()
    try:
        apply_env(mp, tiny_registry[0])
        return {alias: load(alias) for alias in ("chat-test", "embed-test", "rerank-test")}
    finally:
        mp.undo()
        get_settings.cache_clear()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ------------------------------------------------------------------------------------------------ chat
MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.mark.parametrize("options", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_chat_answers_what_the_runtime_answers(client, runtime, options) -> None:
    expected = runtime["chat-test"].chat(MESSAGES, **options)
    assert expected  # a real reply: the equality below is not between two empty strings
    raw = client.chat.completions.with_raw_response.create(model="chat-test", messages=MESSAGES, **options)
    reply = raw.parse()
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].message.role == "assistant"
    assert reply.model == "chat-test" and reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].finish_reason == "length"  # a tiny random model does not say its end token in 8
    ids = runtime["chat-test"].prompt_ids(messages=MESSAGES)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(ids), 8)
    assert reply.usage.total_tokens == len(ids) + 8
    assert reply.system_fingerprint.startswith("slmops-causal-lm/")
    assert raw.headers["x-slmops-model-version"] == reply.system_fingerprint


def test_chat_streams_the_same_text_in_chunks(client, runtime) -> None:
    expected = list(runtime["chat-test"].stream(messages=MESSAGES, **SAMPLED))
    stream = client.chat.completions.create(
        model="chat-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **SAMPLED
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert deltas == expected and len(deltas) > 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8  # the usage chunk comes last


def test_a_stop_string_ends_with_finish_reason_stop(client, runtime) -> None:
    text = runtime["chat-test"].chat(MESSAGES, **GREEDY)
    stop = text[2:4]
    reply = client.chat.completions.create(model="chat-test", messages=MESSAGES, stop=stop, **GREEDY)
    assert reply.choices[0].message.content == text[: text.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


# ------------------------------------------------------------------------------------------------ completions
def test_completions_of_a_list_of_prompts(client, runtime) -> None:
    prompts = ["The sun", "Water boils at"]
    answer = client.completions.create(model="chat-test", prompt=prompts, **SAMPLED)
    assert [c.index for c in answer.choices] == [0, 1]
    assert [c.text for c in answer.choices] == [runtime["chat-test"].generate(p, **SAMPLED) for p in prompts]
    assert answer.object == "text_completion" and answer.usage.completion_tokens == 16


def test_echo_with_logprobs_scores_the_prompt_from_the_models_logits(client, runtime) -> None:
    model = runtime["chat-test"]
    prompt = "The sun rises in the east"
    ids = model.prompt_ids(prompt)
    expected = _log_softmax(model.logits(ids))
    answer = client.completions.create(model="chat-test", prompt=prompt, echo=True, max_tokens=0, logprobs=1)
    choice = answer.choices[0]
    assert choice.text == prompt
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) and "".join(lp.tokens) == model.tokenizer.decode(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx([expected[i - 1, ids[i]] for i in range(1, len(ids))], abs=1e-5)
    assert [max(t.values()) for t in lp.top_logprobs[1:]] == pytest.approx(expected[:-1].max(axis=1), abs=1e-5)
    assert lp.text_offset == list(np.cumsum([0, *map(len, lp.tokens)])[:-1])


def test_lm_eval_style_token_prompt_scores_context_and_one_generated_token(http, runtime) -> None:
    """lm-evaluation-harness' local-completions: token ids, echo, max_tokens=1, logprobs=1, temperature 0."""
    model = runtime["chat-test"]
    ids = model.prompt_ids("Once upon a time there was")
    body = {"model": "chat-test", "prompt": ids, "echo": True, "max_tokens": 1, "logprobs": 1, "temperature": 0}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    full = [*ids, int(np.argmax(model.logits(ids)[-1]))]  # greedy: the likeliest next token
    expected = _log_softmax(model.logits(full))
    assert len(choice["logprobs"]["token_logprobs"]) == len(ids) + 1
    assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(
        [expected[i - 1, full[i]] for i in range(1, len(full))], abs=1e-5
    )
    # greedy: the generated token is the most likely one after the context
    last = choice["logprobs"]["top_logprobs"][-1]
    assert max(last.values()) == pytest.approx(choice["logprobs"]["token_logprobs"][-1], abs=1e-6)


# ------------------------------------------------------------------------------------------------ others
def test_embeddings_equal_the_runtimes(client, http, runtime) -> None:
    texts = ["a man is eating food", "the stock market fell"]
    expected = runtime["embed-test"].embed(texts)
    answer = client.embeddings.create(model="embed-test", input=texts)  # the client asks for base64
    np.testing.assert_allclose([d.embedding for d in answer.data], expected, atol=1e-6)
    floats = http.post("/v1/embeddings", json={"model": "embed-test", "input": texts[0], "encoding_format": "float"})
    np.testing.assert_allclose(floats.json()["data"][0]["embedding"], expected[0], atol=1e-6)
    packed = http.post("/v1/embeddings", json={"model": "embed-test", "input": texts, "encoding_format": "base64"})
    vectors = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed.json()["data"]]
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_a_named_folder_is_served_under_its_name(client, runtime) -> None:
    answer = client.embeddings.create(model="local-embed", input=["hello"], encoding_format="float")
    np.testing.assert_allclose(answer.data[0].embedding, runtime["embed-test"].embed(["hello"])[0], atol=1e-6)


def test_rerank_in_the_cohere_shape(http, runtime) -> None:
    query = "what is the boiling point of water"
    docs = ["the stock market fell", "water boils at one hundred degrees", "plants use sunlight"]
    scores = runtime["rerank-test"].scores(query, docs)
    order = list(np.argsort(-scores)[:2])
    for model in ("rerank-test", "models:/slmops-cross-encoder@rerank-test"):
        response = http.post("/v1/rerank", json={"model": model, "query": query, "documents": docs, "top_n": 2})
        results = response.json()["results"]
        assert [r["index"] for r in results] == order
        assert [r["document"]["text"] for r in results] == [docs[i] for i in order]
        assert [r["relevance_score"] for r in results] == pytest.approx([float(scores[i]) for i in order], abs=1e-6)
        assert response.headers["x-slmops-model-version"].startswith("slmops-cross-encoder/")


def test_models_lists_the_gated_aliases_and_named_folders(client) -> None:
    listed = {m.id: m for m in client.models.list()}
    assert {"chat-test", "embed-test", "rerank-test", "fill-test", "local-embed"} <= set(listed)
    assert "failed-test" not in listed
    chat = listed["chat-test"].model_dump()
    assert chat["registered_model"] == "slmops-causal-lm" and chat["version"].isdigit()
    assert (chat["variant"], chat["recipe"]) == ("tiny-llama", "fp32") and len(chat["digest"]) >= 12
    assert chat["state"] in ("loaded", "available")
    assert listed["local-embed"].model_dump()["version"] == "local"


def test_every_spelling_of_a_version_shares_one_loaded_model(client, http) -> None:
    chat = next(m for m in client.models.list() if m.id == "chat-test").model_dump()
    for spelling in ("chat-test", "models:/slmops-causal-lm@chat-test", f"models:/slmops-causal-lm/{chat['version']}"):
        client.completions.create(model=spelling, prompt="hi", max_tokens=1)
    loaded = http.get("/ready").json()["loaded"]
    assert loaded.count(f"models:/slmops-causal-lm/{chat['version']}") == 1
    assert not any("@" in target or target == "chat-test" for target in loaded)


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("options", "param", "words"),
    [
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"n": 2}, "n", "n=2 is not supported"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools", "tools are not"),
        ({"response_format": {"type": "json_object"}}, "response_format", "'json_object' is not supported"),
        ({"frequency_penalty": 0.5}, "frequency_penalty", "frequency_penalty=0.5 is not supported"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"max_tokens": 10_000}, "max_tokens", "context length is 256 tokens"),
    ],
    ids=["temperature", "n", "tools", "response_format", "penalty", "seed", "context"],
)
def test_bad_parameters_are_bad_requests(client, options, param, words) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="chat-test", messages=MESSAGES, **options)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == param and words in error["message"], error
    assert "truncate" not in error["message"]


def test_harmless_openai_fields_are_accepted(client) -> None:
    reply = client.chat.completions.create(
        model="chat-test",
        messages=MESSAGES,
        n=1,
        user="u",
        frequency_penalty=0,
        presence_penalty=0,
        logit_bias={},
        max_completion_tokens=2,
        temperature=0,
    )
    assert reply.usage.completion_tokens == 2


@pytest.mark.parametrize(
    ("model", "gated"),
    [("no-such-alias", False), ("models:/slmops-causal-lm/99", False), ("failed-test", True), ("FAILED", True)],
)
def test_unknown_or_ungated_models_are_not_found(client, failed_version, model, gated) -> None:
    model = failed_version[1] if model == "FAILED" else model  # the failed version by its models:/ URI
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1)
    assert caught.value.body["code"] == "model_not_found"
    assert f"model {model!r} is not a served model" in caught.value.body["message"]
    assert ("has not passed its quality gate" in caught.value.body["message"]) == gated


@pytest.mark.parametrize("kind", ["candidate", "system", "missing"])
def test_folder_paths_are_not_served_and_not_probed(client, tiny_registry, tmp_path, kind) -> None:
    path = {
        "candidate": str(tiny_registry[1]["chat-test"]),  # a real model folder, not named at start-up
        "system": str(tmp_path),  # an existing folder that is no model
        "missing": str(tmp_path / "nope"),
    }[kind]
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model=path, prompt="x", max_tokens=1)
    # the same answer whatever is (or is not) at the path
    assert caught.value.body["message"] == (
        f"model {path!r} is not a served model; GET /v1/models lists the models this server answers for"
    )


def test_a_wrong_or_missing_key_is_refused(server) -> None:
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.body["code"] == "invalid_api_key"
    response = httpx.get(f"{server.url}/v1/models")
    assert response.status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200  # liveness needs no key


CASES = {  # name -> (method, path, body, status, param)
    "unknown-route": ("GET", "/v1/nothing", None, 404, None),
    "wrong-method": ("GET", "/v1/chat/completions", None, 405, None),
    "not-json": ("POST", "/v1/chat/completions", b"{not json", 400, None),
    "missing-messages": ("POST", "/v1/chat/completions", {"model": "chat-test"}, 400, "messages"),
    "typo": (
        "POST",
        "/v1/chat/completions",
        {"model": "chat-test", "messages": MESSAGES, "temprature": 1},
        400,
        "temprature",
    ),
    "empty-model": ("POST", "/v1/chat/completions", {"model": "", "messages": MESSAGES}, 400, "model"),
    "bad-role": (
        "POST",
        "/v1/chat/completions",
        {"model": "chat-test", "messages": [{"role": "x", "content": "y"}]},
        400,
        "messages.0.role",
    ),
    "embed-a-decoder": ("POST", "/v1/embeddings", {"model": "chat-test", "input": "x"}, 400, None),
    "chat-fill-mask": ("POST", "/v1/chat/completions", {"model": "fill-test", "messages": MESSAGES}, 400, None),
    "no-documents": ("POST", "/v1/rerank", {"model": "rerank-test", "query": "q", "documents": []}, 400, "documents"),
    "too-many-inputs": ("POST", "/v1/embeddings", {"model": "embed-test", "input": ["x"] * 257}, 400, "input"),
    "token-out-of-vocab": ("POST", "/v1/completions", {"model": "chat-test", "prompt": [1, 10**6]}, 400, "prompt"),
    "stream-logprobs": (
        "POST",
        "/v1/completions",
        {"model": "chat-test", "prompt": "x", "stream": True, "logprobs": 1},
        400,
        "logprobs",
    ),
}


@pytest.mark.parametrize(("method", "path", "body", "status", "param"), list(CASES.values()), ids=list(CASES))
def test_every_error_is_in_openais_shape(http, method, path, body, status, param) -> None:
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    response = http.request(method, path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["type"], error
    assert error["param"] == param


def test_an_empty_model_name_is_named_as_a_string(http) -> None:
    response = http.post("/v1/chat/completions", json={"model": "", "messages": MESSAGES})
    assert response.json()["error"]["message"].startswith("model: String should have at least 1 character")


def test_an_oversized_body_is_413_before_parsing(http) -> None:
    big = json.dumps({"model": "chat-test", "prompt": "x" * MAX_BODY}).encode()
    response = http.post("/v1/completions", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted while it arrives
        yield b'{"model": "chat-test", "prompt": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    response = http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_a_foreign_host_is_refused(server) -> None:
    response = httpx.get(f"{server.url}/v1/models", headers={"Host": "evil.example", "Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_host"
    assert httpx.get(f"{server.url}/health", headers={"Host": f"localhost:{server.port}"}).status_code == 200


def test_cors_answers_only_the_allowed_origin(server) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{server.url}/v1/chat/completions", headers={"Origin": ORIGIN, **preflight})
    assert allowed.headers.get("access-control-allow-origin") == ORIGIN
    other = httpx.get(f"{server.url}/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_a_lone_surrogate_is_a_bad_request(http) -> None:
    raw = b'{"model": "chat-test", "messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 1}'
    response = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages.0.content"
    assert "unpaired surrogate" in response.json()["error"]["message"]


def test_a_bad_seed_with_stream_is_400_before_any_event(http) -> None:
    body = {"model": "chat-test", "messages": MESSAGES, "stream": True, "seed": -1}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        assert json.loads(response.read())["error"]["param"] == "seed"


def test_the_openapi_schema_documents_the_error_shape(http) -> None:
    schema = http.get("/openapi.json").json()
    responses = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "404", "413", "500"} <= set(responses)
    assert responses["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
