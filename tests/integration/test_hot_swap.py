"""Hot swap against a real ``slmops serve``: an alias moved in the MLflow registry (through mlflow's client) while
clients stream is followed without a failed request; a version whose files do not verify is not swapped in; and
``POST /admin/reload`` / SIGHUP swap at once on a server that does not poll."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from slmops.runtime.watch import Swap
from tests.conftest import REPO_ROOT, UNSET, apply_env
from tests.support.slmopsserver import SlmopsServer

KEY = "swap-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
POLL_S = 1.0
SWAP_WAIT_S = POLL_S + 60.0  # a poll, then download, verify, load and warm a tiny model on a loaded machine
CHAT = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 200, "temperature": 0.0}


@pytest.fixture(autouse=True)
def _registry_env(tiny_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    apply_env(monkeypatch, tiny_registry[0])


@pytest.fixture(scope="module")
def registry(tiny_registry, tmp_path_factory) -> dict[str, Any]:
    """A copy of the tiny registry with two more causal-lm versions: ``new`` (the same files as the chat-test
    version) and ``bad`` (a copy of them with one byte changed in a file the manifest covers). The aliases
    ``swap-test``, ``reload-test`` and ``app-test`` point at the chat-test version."""
    from slmops.names import registered_model_name
    from slmops.runtime.cache import model_folder
    from slmops.runtime.registry import connect
    from slmops.settings import Settings, get_settings
    from tests.support.mlflowserver import forget_mlflow_uris

    env = tiny_registry[0]
    root = tmp_path_factory.mktemp("swap-registry")
    mlruns = root / "mlruns"  # a copy of the whole store: slmops re-roots a copied store's paths into it
    shutil.copytree(env["SLMOPS_MLRUNS_DIR"], mlruns)
    name = registered_model_name("causal-lm")
    mp = pytest.MonkeyPatch()
    try:
        apply_env(mp, {**env, "SLMOPS_MLRUNS_DIR": str(mlruns)})
        client = connect(Settings(mlruns_dir=mlruns))
        good = client.get_model_version_by_alias(name, "chat-test")
        new = client.create_model_version(name, source=good.source, run_id=good.run_id, tags=good.tags)
        corrupt = root / "corrupt"
        shutil.copytree(client.get_model_version_download_uri(name, good.version).removeprefix("file://"), corrupt)
        folder = model_folder(corrupt, "corrupt copy")
        victim = next(p for p in sorted(folder.iterdir()) if p.suffix == ".json" and p.name != "slmops-manifest.json")
        victim.write_bytes(victim.read_bytes().replace(b"{", b"{ ", 1))  # still JSON, no longer the manifest's hash
        bad = client.create_model_version(name, source=str(corrupt), run_id=good.run_id, tags=good.tags)
        for alias in ("swap-test", "reload-test", "app-test"):
            client.set_registered_model_alias(name, alias, good.version)
    finally:
        forget_mlflow_uris()
        mp.undo()
        get_settings.cache_clear()
    return {"mlruns": mlruns, "name": name, "good": str(good.version), "new": str(new.version), "bad": str(bad.version)}


def _move(registry: dict[str, Any], alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` through mlflow's client, as `slmops recommend` would."""
    from slmops.runtime.registry import connect
    from slmops.settings import Settings
    from tests.support.mlflowserver import forget_mlflow_uris

    try:
        connect(Settings(mlruns_dir=registry["mlruns"])).set_registered_model_alias(registry["name"], alias, version)
    finally:
        forget_mlflow_uris()


def _server(tiny_registry, registry, root: Path, poll_s: float) -> SlmopsServer:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env |= tiny_registry[0] | {
        "SLMOPS_MLRUNS_DIR": str(registry["mlruns"]),
        "SLMOPS_API_KEY": KEY,
        "SLMOPS_ALIAS_POLL_S": str(poll_s),
        "SLMOPS_THREADS": "1",
        "SLMOPS_LOG_LEVEL": "INFO",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return SlmopsServer(root, env=env, args=[])


@pytest.fixture(scope="module")
def polling(tiny_registry, registry, tmp_path_factory):
    with _server(tiny_registry, registry, tmp_path_factory.mktemp("serve-polling"), POLL_S) as running:
        yield running


@pytest.fixture(scope="module")
def manual(tiny_registry, registry, tmp_path_factory):
    with _server(tiny_registry, registry, tmp_path_factory.mktemp("serve-manual"), 0) as running:
        yield running


def _fingerprint_version(fingerprint: str) -> str:
    return fingerprint.split(":")[0].rsplit("/", 1)[1]  # slmops-causal-lm/3:1f2e... -> 3


def _chat(server: SlmopsServer, alias: str) -> str:
    """One non-streaming chat request; the version that answered it."""
    response = httpx.post(f"{server.url}/v1/chat/completions", json={**CHAT, "model": alias}, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"]
    assert response.headers["x-slmops-model-version"] == body["system_fingerprint"]
    return _fingerprint_version(body["system_fingerprint"])


def _stream(server: SlmopsServer, alias: str) -> tuple[str, str | None]:
    """One streaming chat request: (the answering version, a description of what went wrong or None)."""
    body = {**CHAT, "model": alias, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as response:
        version = _fingerprint_version(response.headers.get("x-slmops-model-version", "none/none:"))
        if response.status_code != 200:
            return version, f"HTTP {response.status_code}: {response.read()[:300]!r}"
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return version, f"the stream ended without [DONE]: {events[-3:]}"
    chunks = [json.loads(e) for e in events[:-1]]
    if any("error" in c for c in chunks):
        return version, f"an error event: {[c for c in chunks if 'error' in c]}"
    if {_fingerprint_version(c["system_fingerprint"]) for c in chunks} != {version}:
        return version, "chunks from another version than the header's"
    if chunks[-1]["choices"][0]["finish_reason"] not in ("stop", "length"):
        return version, f"no finish_reason: {chunks[-1]}"
    return version, None


def _listed(server: SlmopsServer, alias: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v1/models", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return next(m for m in response.json()["data"] if m["id"] == alias)


def _ready(server: SlmopsServer) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/ready", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _wait_for(what: str, check: Callable[[], bool], timeout_s: float, server: SlmopsServer) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout_s:.0f} s; server log:\n{server.log_tail()}")


def test_alias_moved_while_clients_stream_is_followed_without_a_failed_request(polling, registry) -> None:
    good, new = registry["good"], registry["new"]
    assert _chat(polling, "swap-test") == good  # first use: the alias is pinned and watched
    assert _listed(polling, "swap-test")["version"] == good
    results: list[tuple[str, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                results.append(_stream(polling, "swap-test"))
            except Exception as exc:  # a dropped connection is a failed request too
                results.append(("?", f"{type(exc).__name__}: {exc}"))

    clients = [threading.Thread(target=client, daemon=True) for _ in range(3)]
    for thread in clients:
        thread.start()
    try:
        _wait_for("the first streams", lambda: len(results) >= 3, 60, polling)
        _move(registry, "swap-test", new)
        _wait_for(
            "/v1/models reporting the new version",
            lambda: _listed(polling, "swap-test")["version"] == new,
            SWAP_WAIT_S,
            polling,
        )
        seen = len(results)
        _wait_for("streams answered by the new version", lambda: results[seen:].count((new, None)) >= 3, 60, polling)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    failures = [r for r in results if r[1] is not None]
    assert not failures, failures[:5]
    versions = [v for v, _ in results]
    assert set(versions) == {good, new}
    assert versions.index(new) > 0 and good not in versions[seen + len(clients) :]  # at most the in-flight ones after
    listed = _listed(polling, "swap-test")
    assert listed["fingerprint"].startswith(f"{registry['name']}/{new}:") and listed["swap_error"] is None
    # the old version is unloaded once its last stream has finished
    old = f"models:/{registry['name']}/{good}"
    _wait_for("the old version's unload", lambda: old not in _ready(polling)["loaded"], 30, polling)
    assert _ready(polling)["draining"] == []
    assert "swapped swap-test from" in polling.log_tail(20000)


def test_a_version_that_fails_verification_is_not_swapped_in(polling, registry) -> None:
    serving = _chat(polling, "swap-test")  # whatever the previous test left it at (pinned either way)
    _move(registry, "swap-test", registry["bad"])
    bad_uri = f"models:/{registry['name']}/{registry['bad']}"

    def refused() -> bool:
        error = _ready(polling)["aliases"]["swap-test"]["swap_error"]
        return error is not None and bad_uri in error

    _wait_for("/ready saying why the bad version was refused", refused, SWAP_WAIT_S, polling)
    state = _ready(polling)["aliases"]["swap-test"]
    assert state["version"] == serving
    assert state["swap_error"] == f"{bad_uri} failed verification; still serving models:/{registry['name']}/{serving}"
    assert str(Path.home()) not in state["swap_error"] and "/" + "tmp" not in state["swap_error"]  # no paths leak
    assert _chat(polling, "swap-test") == serving  # the old version keeps answering
    listed = _listed(polling, "swap-test")
    assert listed["version"] == serving and listed["swap_error"] == state["swap_error"]
    assert bad_uri not in _ready(polling)["loaded"]
    assert "IntegrityError" in polling.log_tail(20000)  # the details are in the log
    time.sleep(3 * POLL_S)  # later polls do not retry the same broken version
    assert polling.log_tail(20000).count(f"not swapping swap-test to {bad_uri}") == 1


def test_reload_endpoint_and_sighup_swap_at_once(manual, registry) -> None:
    good, new = registry["good"], registry["new"]
    assert _chat(manual, "reload-test") == good
    _move(registry, "reload-test", new)
    time.sleep(1.0)
    assert _chat(manual, "reload-test") == good  # no poll: the pinned version keeps serving
    assert httpx.post(f"{manual.url}/admin/reload", timeout=60).status_code == 401
    response = httpx.post(f"{manual.url}/admin/reload", headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    uri = f"models:/{registry['name']}"
    assert response.json()["swapped"] == [{"alias": "reload-test", "from": f"{uri}/{good}", "to": f"{uri}/{new}"}]
    assert _chat(manual, "reload-test") == new
    assert _listed(manual, "reload-test")["version"] == new
    # SIGHUP: the same refresh, from the background thread
    _move(registry, "reload-test", good)
    assert manual.proc is not None
    os.kill(manual.proc.pid, signal.SIGHUP)
    _wait_for("the swap after SIGHUP", lambda: _listed(manual, "reload-test")["version"] == good, SWAP_WAIT_S, manual)
    assert _chat(manual, "reload-test") == good


def test_an_app_gets_hot_swap_from_the_runtime(registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """No server: ModelPool + AliasWatcher in this process. A leased version outlives its swap until released."""
    from slmops.runtime import AliasWatcher, ModelPool
    from slmops.settings import get_settings

    monkeypatch.setenv("SLMOPS_MLRUNS_DIR", str(registry["mlruns"]))
    get_settings.cache_clear()
    uri = f"models:/{registry['name']}"
    pool = ModelPool(max_memory_mb=1024)
    watcher = AliasWatcher(pool, poll_s=0)
    with watcher.use("app-test") as old_model:
        assert watcher.pinned("app-test").version == registry["good"]
        expected = old_model.generate("The sun", max_tokens=4, temperature=0.0)
        _move(registry, "app-test", registry["new"])
        assert watcher.refresh() == [Swap("app-test", f"{uri}/{registry['good']}", f"{uri}/{registry['new']}")]
        assert watcher.draining() == [f"{uri}/{registry['good']}"]  # leased: still loaded, still answering
        assert old_model.generate("The sun", max_tokens=4, temperature=0.0) == expected
        with watcher.use("app-test") as new_model:
            assert new_model is not old_model and new_model.generate("The sun", max_tokens=4, temperature=0.0)
    assert watcher.draining() == [] and pool.loaded() == [f"{uri}/{registry['new']}"]
    assert not old_model.is_loaded
    _move(registry, "app-test", registry["bad"])
    [failed] = watcher.refresh()
    assert failed.new is None and "failed verification" in (failed.error or "")
    assert watcher.status()["app-test"]["version"] == registry["new"]
    assert watcher.refresh(retry_failed=False) == []  # the poll does not retry it
    pool.clear()
