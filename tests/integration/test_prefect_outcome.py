"""Prefect shows the outcome: artifacts, slmops' log lines in the flow-run log, a documented one-run-at-a-time
deployment, and flow parameters that narrow the build to some variants and recipes. All against a real
Prefect API (prefect_test_harness) and the tiny models on a loopback Hub."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from slmops.errors import BuildLockError, ConfigError


@pytest.fixture()
def prefect_env(tiny_models, isolated, monkeypatch: pytest.MonkeyPatch):
    from prefect.testing.utilities import prefect_test_harness

    from tests.conftest import apply_env, tiny_env
    from tests.support.hubserver import HubServer

    with HubServer() as hub:
        for vid, (folder, _) in tiny_models.items():
            hub.state.publish_folder(f"tiny/{vid}", folder)
        apply_env(monkeypatch, {**tiny_env(isolated, tiny_models, hub.endpoint), "SLMOPS_LOG_LEVEL": "INFO"})
        monkeypatch.delenv("SLMOPS_BUILD_LOCK_OWNER", raising=False)
        with prefect_test_harness(server_startup_timeout=120):
            yield hub


def test_one_variant_one_recipe_build_publishes_artifacts_and_slmops_logs(prefect_env, isolated, monkeypatch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, LogFilter, LogFilterFlowRunId

    from flows.build import build
    from slmops.project import Project
    from slmops.settings import get_settings

    prefect_env.state.inject("slow", "/tiny/tiny-llama/resolve/*/model.safetensors", arg=100_000)  # 400 kB: 4 s
    monkeypatch.setenv("SLMOPS_PROGRESS_EVERY_S", "0.5")
    get_settings.cache_clear()
    artifacts = isolated / "artifacts"
    refused: list[subprocess.CompletedProcess[str]] = []
    watcher = threading.Thread(target=_stage_while_flow_runs, args=(artifacts, refused), daemon=True)
    watcher.start()
    decisions = build(variants=["tiny-llama"], recipes=["wo-int8"])
    watcher.join(timeout=60)
    # the flow held the lock for its run: a stage of another build (dvc repro, a shell) refused meanwhile
    assert len(refused) == 1 and refused[0].returncode == 1, refused
    err = " ".join(refused[0].stderr.split())
    assert f"error: slmops fetch tiny-bert: another build holds {artifacts.resolve()}: pid {os.getpid()} (" in err
    project = Project.load()
    built = sorted(p.name for p in (project.root / "candidates" / "tiny-llama").iterdir())
    assert built == ["fp32", "wo-int8"]  # the reference is kept; pipeline.yaml's wo-int4 is not built
    assert not (project.root / "fetch" / "tiny-bert").exists()
    with get_client(sync_client=True) as client:
        keys = ["slmops-recommendations", "slmops-gates", "slmops-benchmarks"]
        found = {
            a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
        }
        run_ids = {a.flow_run_id for a in found.values()}
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(run_ids))))
        names = {run.name for run in client.read_task_runs()}
    assert set(found) == set(keys) and len(run_ids) == 1
    recs = str(found["slmops-recommendations"].data)
    for usecase, decision in decisions.usecases.items():
        assert f"## {usecase}" in recs and decision.why.split(";")[0][:40] in recs
    for field in type(decisions.usecases["chat-test"]).model_fields:  # every field of a Decision is shown
        assert field in recs
    gates = str(found["slmops-gates"].data)
    assert "| tiny-llama | fp32 | yes |" in gates and "| tiny-llama | wo-int8 |" in gates and "ppl_ratio" in gates
    bench = found["slmops-benchmarks"].data
    assert "tiny-llama" in str(bench) and "wo-int8" in str(bench) and "decode_tok_s" in str(bench)
    slmops_logs = [log for log in logs if log.name.startswith("slmops")]
    messages = " ".join(log.message for log in slmops_logs)
    assert "fetched tiny-llama from" in messages and "quantized tiny-llama with wo-int8" in messages
    assert any(log.task_run_id is not None for log in slmops_logs)  # logged inside the tasks, attributed to them
    # the download's progress lines (stderr is not a terminal under pytest) reach the fetch task's log too
    progress = [log for log in slmops_logs if log.name == "slmops.progress"]
    assert progress and all(log.task_run_id is not None for log in progress)
    assert re.match(r"fetch tiny-llama: \d+\.\d/0\.4 MB \(\d+%\) [\d.]+ MB/s$", progress[0].message), progress[
        0
    ].message
    assert {"fetch[tiny-llama]", "quantize[tiny-llama]", "recommend"} <= names


def _stage_while_flow_runs(artifacts: Path, out: list[subprocess.CompletedProcess[str]]) -> None:
    """Once this process holds the build lock (the flow runs), run a stage command as another build would."""
    from slmops.artifacts import _holders

    for _ in range(3000):
        if artifacts.is_dir() and os.getpid() in _holders(artifacts.resolve()):
            break
        time.sleep(0.1)
    else:
        return
    env = {k: v for k, v in os.environ.items() if k != "SLMOPS_BUILD_LOCK_OWNER"}  # not a child of the build
    env["SLMOPS_BUILD_LOCK_WAIT_S"] = "0"
    cmd = [sys.executable, "-m", "slmops.cli", "fetch", "tiny-bert"]
    out.append(subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120))


def test_unknown_parameters_are_named_with_the_known_ones(prefect_env) -> None:
    from flows.build import build

    with pytest.raises(ConfigError, match=r"unknown recipe 'int3'; defined in .*recipes.yaml: fp32, .*wo-int8"):
        build(recipes=["int3"])
    with pytest.raises(ConfigError, match=r"unknown variant 'tiny-gpt'.*\(tiny-llama, tiny-bert\)"):
        build(variants=["tiny-gpt"])
    with pytest.raises(ConfigError, match=r"recipe 'dyn-int8-pc' supports .* none of the variants tiny-llama"):
        build(variants=["tiny-llama"], recipes=["dyn-int8-pc"])


def test_the_flow_refuses_while_another_build_holds_the_lock(prefect_env, isolated, monkeypatch) -> None:
    from flows.build import build

    artifacts = isolated / "artifacts"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from slmops.artifacts import build_lock\n"
            f"with build_lock({str(artifacts)!r}, what='holder'):\n"
            "    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "SLMOPS_BUILD_LOCK_OWNER"},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        monkeypatch.setenv("SLMOPS_BUILD_LOCK_WAIT_S", "0")
        from slmops.settings import get_settings

        get_settings.cache_clear()
        with pytest.raises(BuildLockError, match=rf"another build holds .*pid {holder.pid} \(python -c "):
            build(variants=["tiny-bert"])
    finally:
        holder.communicate(input="")
    assert not (artifacts / "fetch").exists()  # it refused before any work


def test_deployment_runs_one_at_a_time_and_documents_its_parameters(prefect_env) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    from flows.deploy import deployment

    deployment_id = deployment(name="test", cron="0 3 * * *").apply()
    with get_client(sync_client=True) as client:
        made = client.read_deployment(deployment_id)
    assert made.concurrency_limit == 1 or (made.global_concurrency_limit and made.global_concurrency_limit.limit == 1)
    assert made.concurrency_options is not None
    assert made.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
    props = made.parameter_openapi_schema["properties"]
    assert set(props) == {"variants", "recipes"}
    assert "pipeline.yaml" in props["variants"]["description"] and "reference recipe" in props["recipes"]["description"]
    assert "One run at a time" in (made.description or "")
