"""`slmops stack` live: PostgreSQL, the MLflow server and the Prefect server started by the CLI, tiny models registered
and recommended through the PostgreSQL-backed server, loaded over HTTP (slmops.load, pyfunc, `slmops serve`), then
`slmops stack down` leaving no process behind. One stack per module (the services take a minute to start)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from slmops.names import TAG_DIGEST, registered_model_name
from slmops.settings import get_settings
from tests.conftest import UNSET, apply_env, isolated_env
from tests.support.process import running

MISSING = [name for name in ("initdb", "pg_ctl") if shutil.which(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"{' and '.join(MISSING)} (PostgreSQL) not on PATH: `slmops stack` needs them"
)

UP_TIMEOUT_S = 600  # the CLI's own limit is per service (SLMOPS_STACK_TIMEOUT_S); this bounds the whole command
OPTIONS = {"max_tokens": 6, "temperature": 0.8, "top_p": 0.9, "seed": 5}


def stack_cli(*args: str, env: dict[str, str], timeout: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slmops.cli", "stack", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tree(pids: list[int]) -> set[int]:
    """``pids`` and every descendant of theirs alive now."""
    found = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            found |= {proc.pid, *(c.pid for c in proc.children(recursive=True))}
        except psutil.NoSuchProcess:
            continue
    return found


def of_stack(stack_dir: Path) -> set[int]:
    """Live processes started for the stack in ``stack_dir``, and their descendants: the services inherit the CLI's
    environment, which names the folder (SLMOPS_STACK_DIR); PostgreSQL overwrites its environment with its process
    titles, but its postmaster's command line names the cluster's folder (state.json's ``postgres_root``)."""
    state = json.loads((stack_dir / "state.json").read_text())
    cluster = f"-D {state['postgres_root']}/data"
    roots = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("SLMOPS_STACK_DIR") == str(stack_dir) or cluster in " ".join(proc.cmdline()):
                roots.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return running(tree(roots))


@dataclass
class Stack:
    dir: Path
    env: dict[str, str]  # for the CLI: isolated stores, SLMOPS_STACK_DIR
    up: subprocess.CompletedProcess[str]
    status: dict[str, Any]

    @property
    def urls(self) -> dict[str, str]:
        return {s["name"]: s["url"] for s in self.status["services"]}

    @property
    def pids(self) -> list[int]:
        return [s["pid"] for s in self.status["services"]]

    @property
    def client_env(self) -> dict[str, str]:
        """The environment of a client of the stack: only the two URLs `up` printed."""
        return {**self.env, **self.status["env"]}

    def sql(self, database: str, query: str) -> list[tuple[Any, ...]]:
        import psycopg

        port = int(self.urls["postgres"].rsplit(":", 1)[1])
        password = (self.dir / "postgres.password").read_text().strip()
        with psycopg.connect(
            host="127.0.0.1", port=port, user="slmops", password=password, dbname=database, connect_timeout=5
        ) as conn:
            return list(conn.execute(query).fetchall())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if k not in UNSET} | isolated_env(home)
    env["SLMOPS_STACK_DIR"] = str(home / "stack")
    up = stack_cli("up", env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        status = stack_cli("status", "--json", env=env, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        yield Stack(home / "stack", env, up, json.loads(status.stdout))
    finally:
        # test_down_stops_every_process checks `down`; this is the safety net, and --purge deletes the cluster
        # (which lives outside a pytest temp folder, see slmops.stack.services.Postgres)
        stack_cli("down", "--purge", env=env, timeout=300)


@dataclass
class Registry:
    versions: dict[str, str | None]  # variant id -> registered version of its fp32 candidate
    folders: dict[str, Path]
    variants: dict[str, Any]
    decisions: Any


@pytest.fixture(scope="module")
def registry(stack: Stack, tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The tiny Llama and BERT exported, gated, registered and recommended through the stack's MLflow server."""
    from slmops.recommend import load_usecases, recommend
    from tests.support.mlflowserver import forget_mlflow_uris
    from tests.support.registry import register_candidates
    from tests.support.tiny import build_candidates, from_folder, write_configs

    home = tmp_path_factory.mktemp("stack-build")
    versions, folders, variants = {}, {}, {}
    mp = pytest.MonkeyPatch()
    try:
        apply_env(mp, stack.client_env)
        for vid in ("tiny-llama", "tiny-bert"):
            variant = build_candidates(home / vid, vid, from_folder(*tiny_models[vid]), recipes=("fp32",))
            versions[vid] = register_candidates(variant, home / vid)["fp32"]
            folders[vid] = home / vid / "cand" / "fp32"
            variants[vid] = variant
        write_configs(home / "configs", variants={vid: facts for vid, (_, facts) in tiny_models.items()})
        decisions = recommend(load_usecases(home / "configs" / "usecases.yaml"))
    finally:
        forget_mlflow_uris()
        mp.undo()
        get_settings.cache_clear()
    return Registry(versions, folders, variants, decisions)


@pytest.fixture()
def on_stack(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    """This test's settings point at the stack (after the autouse isolation cleared every tracking URI)."""
    from tests.support.mlflowserver import forget_mlflow_uris

    apply_env(monkeypatch, stack.client_env)
    yield get_settings()
    forget_mlflow_uris()


def rest(base: str, endpoint: str, **params: str) -> dict[str, Any]:
    url = f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return dict(json.loads(response.read()))


# ----------------------------------------------------------------------------------------- the stack itself
def test_up_prints_the_urls_and_status_reports_each_service(stack: Stack) -> None:
    urls = stack.urls
    assert urls["postgres"].startswith("postgresql://slmops@127.0.0.1:")
    assert stack.status["env"] == {
        "MLFLOW_TRACKING_URI": urls["mlflow"],
        "PREFECT_API_URL": f"{urls['prefect']}/api",
    }
    for key, value in stack.status["env"].items():
        assert f"export {key}={value}" in stack.up.stdout
    import onnxruntime

    # then one Prefect worker per work pool this machine serves (configs/devices.yaml; bench-cuda only with a GPU)
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    workers = ["slmops", "build", "bench-cpu-1t", "bench-cpu-2t", *(["bench-cuda"] if cuda else [])]
    assert [(s["name"], s["state"]) for s in stack.status["services"]] == [
        ("postgres", "running"),
        ("mlflow", "running"),
        ("prefect", "running"),
        *((f"worker-{pool}", "running") for pool in workers),
    ]
    assert all(Path(s["log"]).is_file() for s in stack.status["services"])
    assert (stack.dir / "env.sh").read_text() == "".join(f"export {k}={v}\n" for k, v in stack.status["env"].items())
    # loopback only: each service's port is bound on 127.0.0.1 and nothing answers on another address
    for url in urls.values():
        port = int(url.rsplit(":", 1)[1])
        listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
        assert listening == {"127.0.0.1"}, (url, listening)


def test_up_again_says_it_is_already_up(stack: Stack) -> None:
    again = stack_cli("up", env=stack.env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stdout
    status = json.loads(stack_cli("status", "--json", env=stack.env, timeout=60).stdout)
    assert [s["pid"] for s in status["services"]] == stack.pids  # nothing was restarted


def test_both_servers_keep_their_state_in_postgresql(stack: Stack) -> None:
    """The MLflow and Prefect databases hold the servers' schemas, and an object made over Prefect's API is a row."""
    assert stack.sql("mlflow", "SELECT count(*) FROM information_schema.tables WHERE table_name = 'model_versions'")[
        0
    ] == (1,)
    request = urllib.request.Request(
        f"{stack.urls['prefect']}/api/flows/",
        data=json.dumps({"name": "stack-test-flow"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        flow_id = json.loads(response.read())["id"]
    assert stack.sql("prefect", f"SELECT name FROM flow WHERE id = '{flow_id}'") == [("stack-test-flow",)]


# ----------------------------------------------------------------------------------------- slmops on the stack
def test_register_and_recommend_write_the_postgresql_registry(stack: Stack, registry: Registry) -> None:
    from slmops.artifacts import read_manifest

    base = stack.urls["mlflow"]
    models = {m["name"]: m for m in rest(base, "registered-models/search")["registered_models"]}
    lm, emb = registered_model_name("causal-lm"), registered_model_name("sentence-embedding")
    assert set(models) == {lm, emb}
    assert {a["alias"]: a["version"] for a in models[lm]["aliases"]} == {"chat-test": registry.versions["tiny-llama"]}
    assert {a["alias"]: a["version"] for a in models[emb]["aliases"]} == {"embed-test": registry.versions["tiny-bert"]}
    assert registry.decisions.usecases["tiny-memory"].chosen is None  # 1 MB fits nothing: no alias, as planned
    for name, vid in ((lm, "tiny-llama"), (emb, "tiny-bert")):
        version = rest(base, "model-versions/get", name=name, version=str(registry.versions[vid]))["model_version"]
        tags = {t["key"]: t["value"] for t in version["tags"]}
        assert tags[TAG_DIGEST] == read_manifest(registry.folders[vid]).digest()
        where = rest(base, "model-versions/get-download-uri", name=name, version=str(registry.versions[vid]))
        assert where["artifact_uri"].startswith("mlflow-artifacts:/")  # the server's proxy, not a client's folder
    # the same facts, read from the server's PostgreSQL database
    rows = stack.sql("mlflow", "SELECT name, alias, version FROM registered_model_aliases ORDER BY alias")
    assert rows == [
        (lm, "chat-test", int(registry.versions["tiny-llama"] or 0)),
        (emb, "embed-test", int(registry.versions["tiny-bert"] or 0)),
    ]
    assert any((stack.dir / "mlflow-artifacts").rglob("manifest.json"))  # artifacts went through the proxy to disk


def test_registering_the_same_candidate_again_adds_no_version(stack: Stack, registry: Registry, on_stack) -> None:
    from tests.support.registry import register_candidates

    name = registered_model_name("causal-lm")
    before = rest(stack.urls["mlflow"], "model-versions/search", filter=f"name='{name}'")["model_versions"]
    again = register_candidates(registry.variants["tiny-llama"], registry.folders["tiny-llama"].parents[1])
    after = rest(stack.urls["mlflow"], "model-versions/search", filter=f"name='{name}'")["model_versions"]
    assert again["fp32"] == registry.versions["tiny-llama"]
    assert [v["version"] for v in after] == [v["version"] for v in before] == [registry.versions["tiny-llama"]]


def test_load_resolves_over_rest_and_generates(
    stack: Stack, registry: Registry, on_stack, caplog: pytest.LogCaptureFixture
) -> None:
    from slmops import load
    from slmops.artifacts import read_manifest
    from slmops.runtime.registry import RestRegistryReader, registry_reader, resolve_version

    reader = registry_reader(on_stack)
    assert isinstance(getattr(reader, "reader", None), RestRegistryReader)
    with caplog.at_level(logging.WARNING, logger="slmops"):
        ref = resolve_version("chat-test", reader=reader, settings=on_stack)
        model = load("chat-test")
        text = model.generate("The sun", **OPTIONS)
    assert (ref.version, ref.source[:18]) == (registry.versions["tiny-llama"], "mlflow-artifacts:/")
    assert not [r for r in caplog.records if "falling back" in r.getMessage()]  # the light REST reader answered
    assert read_manifest(model.folder).candidate_digest() == read_manifest(registry.folders["tiny-llama"]).digest()
    assert text and text == model.generate("The sun", **OPTIONS)  # seeded: a real completion, reproducible
    embedder = load("embed-test")
    assert embedder.embed(["a man is eating food"]).shape[0] == 1


def test_pyfunc_and_serve_answer_from_the_stack(stack: Stack, registry: Registry, on_stack, tmp_path: Path) -> None:
    import mlflow.pyfunc
    import pandas as pd

    from slmops import load
    from slmops.runtime.registry import connect
    from tests.support.slmopsserver import SlmopsServer

    expected = load("chat-test").generate("The sun", **OPTIONS)
    connect(on_stack)  # mlflow's own URIs: models:/ resolves on the server
    pyfunc = mlflow.pyfunc.load_model(f"models:/{registered_model_name('causal-lm')}@chat-test")
    assert list(pyfunc.predict(pd.DataFrame({"prompt": ["The sun"]}), params=OPTIONS)) == [expected]
    with SlmopsServer(tmp_path / "serve", env=stack.client_env, args=[]) as server:
        body = json.dumps({"model": "chat-test", "prompt": "The sun", **OPTIONS}).encode()
        request = urllib.request.Request(
            f"{server.url}/v1/completions", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    assert answer["choices"][0]["text"] == expected


def test_a_cluster_made_with_another_password_is_never_waited_on(tmp_path: Path) -> None:
    """A state folder removed without `down --purge` leaves its cluster behind (in the temp folder, when the
    cluster runs as the postgres user); the next stack in that folder has a new password. Its `up` must neither
    loop on "password authentication failed" until the time limit nor reuse the cluster."""
    from slmops.errors import StackError
    from slmops.stack import StackConfig
    from slmops.stack.process import spawn, stop_tree
    from slmops.stack.services import Postgres
    from slmops.stack.stack import _free_port

    config = StackConfig(dir=tmp_path / "s")
    config.log("postgres").parent.mkdir(parents=True)
    old = Postgres(config, port=_free_port(), password="the-first-stack")
    try:
        old.prepare()
        popen, recorded = spawn(old.command(), env=old.env(), log=old.log, cwd=old.cwd(), account=old.account)
        try:
            for _ in range(120):
                if old.healthy():
                    break
                assert popen.poll() is None, old.log.read_text()
                time.sleep(0.5)
            else:
                pytest.fail(f"postgres never became healthy; see {old.log}")
            # a cluster from before the password stamp: the health check fails at once, naming the folder to delete
            (old.root / "password.sha256").unlink()
            stranger = Postgres(config, port=old.port, password="the-second-stack")
            stranger.root = old.root  # as its prepare() would find it
            with pytest.raises(StackError, match=f"refuses the password .*delete {old.root}"):
                stranger.healthy()
        finally:
            stop_tree(recorded, sig=Postgres.stop_signal, timeout_s=30, what="postgres")
        (old.root / "password.sha256").write_text(hashlib.sha256(b"the-first-stack").hexdigest())  # as `up` stamps it
        new = Postgres(config, port=_free_port(), password="the-second-stack")
        if old.root == config.postgres_root:  # the cluster lives in the state folder: never deleted silently
            with pytest.raises(StackError, match="made with another password"):
                new.prepare()
        else:  # the temp-folder cluster of a removed state folder: replaced by this stack's own
            new.prepare()
            digest = hashlib.sha256(b"the-second-stack").hexdigest()
            assert (new.root / "password.sha256").read_text().strip() == digest
    finally:  # the cluster outside tmp_path
        shutil.rmtree(old.root, ignore_errors=True)


# ----------------------------------------------------------------------------------------- failure and teardown
def test_a_failed_start_stops_what_it_started_and_names_the_service(tmp_path: Path, stack: Stack) -> None:
    """The MLflow server's port is taken: `up` fails naming mlflow and its log, and PostgreSQL, started first,
    is stopped again."""
    env = {**stack.env, "SLMOPS_STACK_DIR": str(tmp_path / "broken")}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed = stack_cli("up", "--mlflow-port", str(port), "--timeout", "300", env=env)
    log = tmp_path / "broken" / "logs" / "mlflow.log"
    assert failed.returncode == 1
    message = " ".join(failed.stderr.split())  # rich wraps the line
    assert "error: mlflow exited" in message and str(log) in message, failed.stderr
    assert "address already in use" in message  # the log's last lines say why
    state = json.loads((tmp_path / "broken" / "state.json").read_text())
    assert state["services"] == {}
    assert of_stack(tmp_path / "broken") == set()  # postgres, started first, is gone
    status = stack_cli("status", "--json", env=env, timeout=60)
    assert status.returncode == 1
    assert {s["state"] for s in json.loads(status.stdout)["services"]} == {"stopped"}
    purged = stack_cli("down", "--purge", env=env, timeout=60)
    assert purged.returncode == 0, purged.stderr
    assert not (tmp_path / "broken").exists() and not Path(state["postgres_root"]).exists()


def test_a_service_past_its_time_limit_is_stopped_too(tmp_path: Path, stack: Stack) -> None:
    """With one second per service some service is still starting when its time is up (the MLflow server alone
    takes longer to import): `up` names it, and stops it as well as those before it."""
    env = {**stack.env, "SLMOPS_STACK_DIR": str(tmp_path / "slow")}
    failed = stack_cli("up", "--timeout", "1", env=env)
    message = " ".join(failed.stderr.split())
    assert failed.returncode == 1 and "did not answer its health check" in message, failed.stderr
    named = [s for s in ("postgres", "mlflow", "prefect") if f"error: {s} did not answer" in message]
    assert len(named) == 1 and str(tmp_path / "slow" / "logs" / f"{named[0]}.log") in message
    assert json.loads((tmp_path / "slow" / "state.json").read_text())["services"] == {}
    assert of_stack(tmp_path / "slow") == set()
    assert stack_cli("down", "--purge", env=env, timeout=60).returncode == 0


def test_down_stops_every_process(stack: Stack) -> None:
    """Last in the module: `down` leaves no process of the stack (the recorded pids nor any of their children)."""
    before = tree(stack.pids)
    assert set(stack.pids) <= before and len(before) > len(stack.pids)  # postgres has its backends at least
    assert before <= of_stack(stack.dir)  # the check the failure tests rely on sees every process of a stack
    down = stack_cli("down", env=stack.env, timeout=300)
    assert down.returncode == 0, down.stderr
    assert running(before) == set()
    assert of_stack(stack.dir) == set()
    status = stack_cli("status", "--json", env=stack.env, timeout=60)
    assert status.returncode == 1
    assert {s["state"] for s in json.loads(status.stdout)["services"]} == {"stopped"}
