"""The registered models as MLflow pyfunc models: ``mlflow.pyfunc.load_model("models:/...@alias")`` answers as the
slmops runtime does for every task and input shape."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from slmops.errors import PyfuncInputError

OPTIONS = {"max_tokens": 6, "temperature": 0.8, "top_p": 0.9, "seed": 5}
PROMPTS = ["The sun", "Water boils at"]
MESSAGES = [{"role": "user", "content": "hello there"}]
TEXTS = ["a man is eating food", "the stock market fell"]


@pytest.fixture(scope="module")
def models(tiny_registry):
    """The four registered models, loaded once as pyfunc (by alias) and once with slmops.load (the reference)."""
    import mlflow.pyfunc

    from slmops import load
    from slmops.runtime.registry import connect
    from slmops.settings import get_settings
    from tests.conftest import apply_env
    from tests.support.mlflowserver import forget_mlflow_uris

    mp = pytest.MonkeyPatch()
    try:
        apply_env(mp, tiny_registry[0])
        connect(get_settings())  # mlflow's own URIs: models:/ resolves in the tiny registry
        pyfuncs = {
            alias: mlflow.pyfunc.load_model(f"models:/{_name(alias)}@{alias}")
            for alias in ("chat-test", "embed-test", "rerank-test", "fill-test")
        }
        runtimes = {alias: load(alias) for alias in pyfuncs}
    finally:
        forget_mlflow_uris()
        mp.undo()
    return pyfuncs, runtimes


def _name(alias: str) -> str:
    from slmops.names import registered_model_name
    from tests.integration.conftest import ALIASES

    return registered_model_name(ALIASES[alias][1])


def test_causal_lm_answers_prompts_as_the_runtime(models) -> None:
    pyfuncs, runtimes = models
    expected = [runtimes["chat-test"].generate(p, **OPTIONS) for p in PROMPTS]
    assert all(expected) and expected[0] != expected[1]  # real, distinct completions, so the comparison means something
    assert list(pyfuncs["chat-test"].predict(pd.DataFrame({"prompt": PROMPTS}), params=OPTIONS)) == expected
    assert list(pyfuncs["chat-test"].predict({"prompt": PROMPTS[1]}, params=OPTIONS)) == expected[1:]  # one row


def test_causal_lm_params_are_applied(models) -> None:
    pyfuncs, runtimes = models
    greedy = {"max_tokens": 3, "temperature": 0.0}
    out = pyfuncs["chat-test"].predict(pd.DataFrame({"prompt": PROMPTS}), params=greedy)
    assert list(out) == [runtimes["chat-test"].generate(p, **greedy) for p in PROMPTS]
    assert list(out) != [runtimes["chat-test"].generate(p, **OPTIONS) for p in PROMPTS]


def test_causal_lm_answers_chat_messages(models) -> None:
    pyfuncs, runtimes = models
    expected = runtimes["chat-test"].chat(MESSAGES, **OPTIONS)
    assert expected
    frame = pd.DataFrame({"prompt": [PROMPTS[0], None], "messages": [None, json.dumps(MESSAGES)]})
    assert list(pyfuncs["chat-test"].predict(frame, params=OPTIONS)) == [
        runtimes["chat-test"].generate(PROMPTS[0], **OPTIONS),
        expected,
    ]


def test_causal_lm_streams_the_runtimes_deltas(models) -> None:
    from slmops.errors import PyfuncInputError

    pyfuncs, runtimes = models
    deltas = list(pyfuncs["chat-test"].predict_stream({"prompt": PROMPTS[0]}, params=OPTIONS))
    assert len(deltas) > 1 and deltas == list(runtimes["chat-test"].stream(PROMPTS[0], **OPTIONS))
    with pytest.raises(PyfuncInputError, match="a sentence-embedding model does not stream; call predict"):
        list(pyfuncs["embed-test"].predict_stream({"text": TEXTS[0]}))


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(PROMPTS[0], id="str"),
        pytest.param(PROMPTS, id="list"),
        pytest.param(pd.DataFrame({"prompt": PROMPTS}), id="dataframe"),
        pytest.param({"prompt": PROMPTS}, id="dict-of-lists"),
        pytest.param([{"prompt": p} for p in PROMPTS], id="records"),
    ],
)
def test_causal_lm_accepts_every_input_shape(models, given) -> None:
    pyfuncs, runtimes = models
    expected = [runtimes["chat-test"].generate(p, **OPTIONS) for p in ([given] if isinstance(given, str) else PROMPTS)]
    assert list(pyfuncs["chat-test"].predict(given, params=OPTIONS)) == expected


@pytest.mark.parametrize(
    ("alias", "given", "message"),
    [
        ("chat-test", [1, 2], "cannot read int 1 as a row; pass a str, a list of str, or a DataFrame"),
        ("chat-test", pd.DataFrame({"question": PROMPTS}), "row 0 has neither a string 'prompt' nor 'messages'"),
        ("chat-test", [], "the input is empty"),
        ("embed-test", {"sentence": TEXTS}, "row 0 has no string 'text'"),
        ("rerank-test", "a query", "with 'query' and 'document' columns"),
    ],
)
def test_unreadable_input_raises_naming_the_columns(models, alias, given, message) -> None:
    with pytest.raises(PyfuncInputError, match=message):
        models[0][alias].predict(given)


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(pd.DataFrame({"text": TEXTS}), id="dataframe"),
        pytest.param({"text": TEXTS}, id="dict-of-lists"),
        pytest.param(TEXTS, id="list"),
    ],
)
def test_embeddings_are_unit_vectors_of_the_model(models, given) -> None:
    pyfuncs, runtimes = models
    vectors = np.asarray(pyfuncs["embed-test"].predict(given), dtype=np.float32)
    assert vectors.shape == (2, 32)  # the tiny BERT's hidden size
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, runtimes["embed-test"].embed(TEXTS), atol=1e-6)
    assert not np.allclose(vectors[0], vectors[1])


def test_fill_mask_returns_the_runtimes_json(models) -> None:
    pyfuncs, runtimes = models
    texts = ["Paris is the [MASK] of France.", "Plants use [MASK] and water to make [MASK]."]
    out = pyfuncs["fill-test"].predict(pd.DataFrame({"text": texts}), params={"top_k": 2})
    assert [json.loads(row) for row in out] == [runtimes["fill-test"].fill_mask(t, top_k=2) for t in texts]
    first = json.loads(out[0])[0]
    assert len(first) == 2 and 1 >= first[0]["score"] >= first[1]["score"] > 0
    assert "[mask]" not in first[0]["sequence"].lower() and first[0]["sequence"].startswith("paris is the")
    default = json.loads(pyfuncs["fill-test"].predict(pd.DataFrame({"text": texts[:1]}))[0])
    assert [len(row) for row in default] == [5]  # the signature's default top_k


def test_cross_encoder_scores_pairs(models) -> None:
    pyfuncs, runtimes = models
    query, docs = "what is the boiling point of water", ["water boils at one hundred degrees", "the stock market fell"]
    out = pyfuncs["rerank-test"].predict(pd.DataFrame({"query": [query, query], "document": docs}))
    np.testing.assert_allclose(out, runtimes["rerank-test"].scores(query, docs), atol=1e-6)
    assert out[0] != out[1]


def test_fill_mask_takes_a_str(models) -> None:
    pyfuncs, runtimes = models
    text = "Paris is the [MASK] of France."
    assert [json.loads(r) for r in pyfuncs["fill-test"].predict(text)] == [
        runtimes["fill-test"].fill_mask(text, top_k=5)
    ]


def test_mlflow_scoring_server_protocol(models) -> None:
    """MLflow's own scoring server (what `mlflow models serve` runs), driven through its FastAPI app."""
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    pyfuncs, runtimes = models
    expected = [runtimes["chat-test"].generate(p, **OPTIONS) for p in PROMPTS]
    with TestClient(scoring_server.init(pyfuncs["chat-test"])) as client:
        for body in (
            {"inputs": PROMPTS},
            {"inputs": {"prompt": PROMPTS}},
            {"inputs": [{"prompt": p} for p in PROMPTS]},
            {"dataframe_records": [{"prompt": p} for p in PROMPTS]},
            {"dataframe_split": {"columns": ["prompt"], "data": [[p] for p in PROMPTS]}},
        ):
            response = client.post("/invocations", json={**body, "params": OPTIONS})
            assert response.status_code == 200, (body, response.text)
            assert response.json()["predictions"] == expected, body
        one = client.post("/invocations", json={"inputs": PROMPTS[1], "params": OPTIONS})
        assert one.json()["predictions"] == expected[1:]
        refused = client.post("/invocations", json={"inputs": {"question": PROMPTS}})
        assert refused.status_code == 400 and "'prompt' or 'messages'" in refused.json()["message"]
    with TestClient(scoring_server.init(pyfuncs["embed-test"])) as client:
        vectors = client.post("/invocations", json={"inputs": TEXTS}).json()["predictions"]
        np.testing.assert_allclose(vectors, runtimes["embed-test"].embed(TEXTS), atol=1e-6)
