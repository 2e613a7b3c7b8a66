"""RestRegistryReader against a real ``mlflow server`` on loopback: the answers of mlflow's own client, the auth
headers it sends, its fallback to mlflow's client on a server error, and ``slmops.load`` through the server."""

from __future__ import annotations

import base64
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from slmops.errors import RegistryError
from slmops.names import TAG_DIGEST
from slmops.runtime.registry import (
    MlflowRegistryReader,
    ReaderUnavailable,
    RestRegistryReader,
    registry_reader,
    resolve_version,
)
from slmops.settings import get_settings
from tests.conftest import UNSET, apply_env, isolated_env
from tests.support.mlflowserver import MlflowServer, RecordingProxy, forget_mlflow_uris
from tests.support.registry import TARGETS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """One ``mlflow server`` for the module, its registry filled through mlflow's client as test_resolve's store:
    two models, a deleted version, aliases, digest tags. Yields (server, the run's artifact URI)."""
    from mlflow import MlflowClient

    home = tmp_path_factory.mktemp("mlflow-server")
    env = {k: v for k, v in os.environ.items() if k not in UNSET} | isolated_env(home)
    with MlflowServer(home / "server", env=env) as srv:
        client = MlflowClient(tracking_uri=srv.url, registry_uri=srv.url)
        run = client.create_run(client.create_experiment("registry-rest"))
        root = run.info.artifact_uri  # the server only registers sources inside a run's artifacts
        for name in ("slmops-causal-lm", "slmops-sentence-embedding"):
            client.create_registered_model(name)
        for i in range(3):
            client.create_model_version(
                "slmops-causal-lm", source=f"{root}/lm/{i}", run_id=run.info.run_id, tags={TAG_DIGEST: f"d{i}"}
            )
        client.create_model_version("slmops-sentence-embedding", source=f"{root}/emb/0", run_id=run.info.run_id)
        client.delete_model_version("slmops-causal-lm", "2")
        client.set_registered_model_alias("slmops-causal-lm", "chat-cpu", "3")
        client.set_registered_model_alias("slmops-sentence-embedding", "embeddings-cpu", "1")
        client.set_terminated(run.info.run_id)
        yield srv, root


@pytest.fixture()
def at(monkeypatch: pytest.MonkeyPatch):
    """Point the settings at a URL (the server or a proxy in front of it); mlflow's global URIs are reset after."""

    def point(url: str, *, var: str = "SLMOPS_TRACKING_URI", **env: str):  # conftest unset every other URI and auth
        for key, value in {var: url, **env}.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        return get_settings()

    yield point
    forget_mlflow_uris()  # MlflowRegistryReader called mlflow.set_tracking_uri(...)


def _answer(target: str, reader, settings):
    try:
        return resolve_version(target, reader=reader, settings=settings)
    except RegistryError as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize("target", TARGETS)
def test_rest_reader_agrees_with_mlflow(server, at, target: str) -> None:
    settings = at(server[0].url)
    light = RestRegistryReader(server[0].url, settings=settings)
    assert _answer(target, light, settings) == _answer(target, MlflowRegistryReader(settings), settings)


def test_answers_are_the_expected_ones(server, at) -> None:
    (srv, root), settings = server, at(server[0].url)
    reader = registry_reader(settings)
    assert type(reader.reader) is RestRegistryReader  # http(s): the light REST reader
    chat = resolve_version("chat-cpu", reader=reader, settings=settings)
    assert chat == resolve_version("models:/slmops-causal-lm@chat-cpu", reader=reader, settings=settings)
    assert (chat.name, chat.version, chat.digest, chat.source) == ("slmops-causal-lm", "3", "d2", f"{root}/lm/2")
    emb = resolve_version("embeddings-cpu", reader=reader, settings=settings)
    assert (emb.name, emb.version, emb.digest, emb.source) == ("slmops-sentence-embedding", "1", None, f"{root}/emb/0")
    where = re.escape(srv.url)
    with pytest.raises(RegistryError, match=rf"no registered model has the alias 'nope' in {where}; run `slmops"):
        resolve_version("nope", reader=reader, settings=settings)
    with pytest.raises(RegistryError, match=rf"models:/slmops-causal-lm/2 does not resolve in {where}"):
        resolve_version("models:/slmops-causal-lm/2", reader=reader, settings=settings)  # deleted
    assert type(reader.reader) is RestRegistryReader  # none of these needed mlflow's client


def test_a_missing_alias_needs_no_fallback(server, at) -> None:
    settings = at(server[0].url)
    reader = registry_reader(settings)
    with pytest.raises(RegistryError, match="does not resolve"):
        resolve_version("models:/slmops-causal-lm@nope", reader=reader, settings=settings)
    assert type(reader.reader) is RestRegistryReader


def test_rest_reader_does_not_import_mlflow(server) -> None:
    code = (
        "import sys\nfrom slmops.settings import get_settings\n"
        "from slmops.runtime.registry import registry_reader, resolve_version\n"
        "s = get_settings(); r = registry_reader(s)\n"
        "ref = resolve_version('chat-cpu', reader=r, settings=s)\n"
        "print(ref.version, type(r.reader).__name__, 'mlflow' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k not in UNSET} | {"SLMOPS_TRACKING_URI": server[0].url}
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "RestRegistryReader", "False"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SLMOPS_TRACKING_TOKEN": "tok-1"}, "Bearer tok-1"),
        ({"MLFLOW_TRACKING_TOKEN": "tok-2"}, "Bearer tok-2"),
        (
            {"MLFLOW_TRACKING_USERNAME": "ann", "MLFLOW_TRACKING_PASSWORD": "s3:cr ét"},
            "Basic " + base64.b64encode("ann:s3:cr ét".encode()).decode(),
        ),
        (
            {"SLMOPS_TRACKING_TOKEN": "tok-3", "MLFLOW_TRACKING_USERNAME": "ann", "MLFLOW_TRACKING_PASSWORD": "pw"},
            "Bearer tok-3",
        ),  # a token wins over basic credentials
        ({"MLFLOW_TRACKING_USERNAME": "ann"}, None),  # a user without a password: no header
        ({}, None),
    ],
)
def test_auth_header_is_sent_on_every_request(server, at, env: dict[str, str], expected: str | None) -> None:
    with RecordingProxy(server[0].url) as proxy:
        settings = at(proxy.url, **env)
        reader = registry_reader(settings)
        ref = resolve_version("chat-cpu", reader=reader, settings=settings)
    assert (ref.name, ref.version, ref.digest) == ("slmops-causal-lm", "3", "d2")  # the proxy passed the answers on
    assert type(reader.reader) is RestRegistryReader
    assert [path.split("?")[0] for _, path, _ in proxy.requests] == [
        "/api/2.0/mlflow/registered-models/search",
        "/api/2.0/mlflow/registered-models/alias",
        "/api/2.0/mlflow/model-versions/get-download-uri",
    ]
    assert [headers.get("Authorization") for _, _, headers in proxy.requests] == [expected] * 3


@pytest.mark.parametrize("status", [500, 503])
def test_a_server_error_falls_back_to_mlflows_client(server, at, caplog, status: int) -> None:
    with RecordingProxy(server[0].url) as proxy:
        settings = at(proxy.url)
        proxy.fail_status, proxy.fail_next = status, 1
        with pytest.raises(ReaderUnavailable, match=rf"models/search.*: HTTP {status} TEMPORARILY_UNAVAILABLE"):
            RestRegistryReader(proxy.url, settings=settings).alias("chat-cpu")
        proxy.fail_next = 1
        reader = registry_reader(settings)
        with caplog.at_level(logging.WARNING, logger="slmops.runtime.registry"):
            ref = resolve_version("chat-cpu", reader=reader, settings=settings)
        expected = resolve_version("chat-cpu", reader=MlflowRegistryReader(settings), settings=settings)
    assert ref == expected and (ref.version, ref.digest) == ("3", "d2")
    assert type(reader.reader) is MlflowRegistryReader  # the reader stays on mlflow's client from now on
    assert [r.getMessage() for r in caplog.records] == [
        (
            f"registry reader RestRegistryReader failed ({proxy.url}/api/2.0/mlflow/registered-models/search"
            f"?max_results=1000: HTTP {status} TEMPORARILY_UNAVAILABLE); falling back to mlflow's client"
        )
    ]
    agents = [headers.get("User-Agent", "") for _, _, headers in proxy.requests]
    assert agents[0].startswith("Python-urllib") and agents[1].startswith("Python-urllib")  # both injected failures
    assert all(agent.startswith("mlflow-python-client") for agent in agents[2:]) and len(agents) > 2


@pytest.fixture(scope="module")
def embed_rest(server, tmp_path_factory: pytest.TempPathFactory):
    """A tiny sentence embedder registered on the server by slmops's register stage, with the alias embed-rest;
    yields its candidate folder."""
    from slmops.runtime.registry import connect
    from tests.support.registry import register_candidates
    from tests.support.tiny import build_candidates, build_tiny_bert

    root = tmp_path_factory.mktemp("embed-rest")
    mp = pytest.MonkeyPatch()
    try:
        apply_env(mp, isolated_env(root / "home") | {"SLMOPS_TRACKING_URI": server[0].url})
        variant = build_candidates(root, "tiny-bert", build_tiny_bert, recipes=("fp32",))
        version = register_candidates(variant, root, settings=get_settings())["fp32"]
        connect(get_settings()).set_registered_model_alias("slmops-sentence-embedding", "embed-rest", version)
    finally:
        forget_mlflow_uris()
        mp.undo()
        get_settings.cache_clear()
    return root / "cand" / "fp32"


def _load_and_compare(folder) -> None:
    from slmops import load
    from slmops.runtime.open import open_folder

    model = load("embed-rest")  # the light REST reader, then mlflow downloads the proxied artifacts
    texts = ["a man is eating food", "the stock market fell"]
    assert model.card.variant == "tiny-bert" and model.folder.is_relative_to(get_settings().cache_dir)
    np.testing.assert_allclose(model.embed(texts), open_folder(folder).embed(texts), atol=1e-6)


def test_load_through_the_server(embed_rest, server, at) -> None:
    at(server[0].url, var="MLFLOW_TRACKING_URI")  # the variable mlflow itself reads too
    _load_and_compare(embed_rest)


def test_load_through_the_server_with_slmops_tracking_uri(embed_rest, server, at) -> None:
    at(server[0].url)
    _load_and_compare(embed_rest)
