"""The build on Prefect work pools and workers, live: `slmops stack up` over the tiny models' configs starts one
worker per pool, `python -m flows.deploy --distributed` declares the pools and deployments, a run of the build
deployment fans out one run per variant to the build worker (in its own folder, registering through the stack's
MLflow server) and reports the device without a worker as not measured; `slmops stack down` stops the workers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.conftest import UNSET, tiny_env
from tests.integration.test_stack import of_stack, running, stack_cli, tree

MISSING = [name for name in ("initdb", "pg_ctl") if shutil.which(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"{' and '.join(MISSING)} (PostgreSQL) not on PATH: `slmops stack` needs them"
)
RUN_TIMEOUT_S = 600  # a tiny build is done in about a minute; a busy machine gets ten


@dataclass
class Distributed:
    dir: Path
    env: dict[str, str]  # the CLI's: tiny configs, the loopback Hub, SLMOPS_STACK_DIR
    status: dict[str, Any]
    home: Path

    @property
    def client_env(self) -> dict[str, str]:
        return {**self.env, **self.status["env"]}

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.status["services"] if s["name"] == name)


@pytest.fixture(scope="module")
def distributed(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distributed]:
    from tests.support.hubserver import HubServer

    home = tmp_path_factory.mktemp("distributed")
    with HubServer() as hub:
        for vid, (folder, _) in tiny_models.items():
            hub.state.publish_folder(f"tiny/{vid}", folder)
        env = {k: v for k, v in os.environ.items() if k not in UNSET} | tiny_env(home, tiny_models, hub.endpoint)
        env |= {"SLMOPS_STACK_DIR": str(home / "stack"), "SLMOPS_LOG_LEVEL": "INFO"}
        rank_per_device(Path(env["SLMOPS_CONFIG_DIR"]))
        up = stack_cli("up", env=env)
        try:
            assert up.returncode == 0, up.stdout + up.stderr
            status = stack_cli("status", "--json", env=env, timeout=60)
            assert status.returncode == 0, status.stdout + status.stderr
            yield Distributed(home / "stack", env, json.loads(status.stdout), home)
        finally:
            stack_cli("down", "--purge", env=env, timeout=300)


def rank_per_device(configs: Path) -> None:
    """chat-test ranks on what the cpu-1t benchmark worker measured; a dead worker's run is Crashed after 60 s."""

    usecases = yaml.safe_load((configs / "usecases.yaml").read_text())
    usecases["usecases"]["chat-test"]["profile"] = "cpu-1t"
    (configs / "usecases.yaml").write_text(yaml.safe_dump(usecases, sort_keys=False))
    pipeline = yaml.safe_load((configs / "pipeline.yaml").read_text())
    pipeline["deploy"] = {"heartbeat_s": 30, "crashed_after_s": 60, "bench_attempts": 2, "bench_wait_s": RUN_TIMEOUT_S}
    (configs / "pipeline.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:  # it ended meanwhile
        return []


def prefect_client(distributed: Distributed):  # noqa: ANN201 - a SyncPrefectClient
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(distributed.status["env"]["PREFECT_API_URL"])


def test_up_declares_the_pools_and_starts_one_online_worker_per_served_pool(distributed: Distributed) -> None:
    from prefect.client.schemas.objects import WorkerStatus

    from slmops.stack import pools

    served = ["slmops", "build", "bench-cpu-1t", "bench-cpu-2t"]  # configs/devices.yaml's CPU profiles
    workers = [s for s in distributed.status["services"] if s["name"].startswith("worker-")]
    assert [w["name"] for w in workers] == [f"worker-{p}" for p in served]
    assert all(w["state"] == "running" and w["url"].startswith("http://127.0.0.1:") for w in workers)
    no_cuda = distributed.status["pools_without_worker"]
    assert list(no_cuda) == ["bench-cuda"] and "CUDAExecutionProvider is not available" in no_cuda["bench-cuda"]
    with prefect_client(distributed) as api:
        limits = {p: api.read_work_pool(p).concurrency_limit for p in [*served, "bench-cuda"]}
        online = {p: [w.status for w in api.read_workers_for_work_pool(p)] for p in served}
        cuda = pools.missing_worker(api, "bench-cuda")
        assert pools.missing_worker(api, "build") is None
    # one build at a time, and never two benchmarks on one device; build workers each take one run at a time
    assert limits == {"slmops": 1, "build": None, "bench-cpu-1t": 1, "bench-cpu-2t": 1, "bench-cuda": 1}
    assert all(statuses == [WorkerStatus.ONLINE] for statuses in online.values()), online
    assert cuda is not None and "no worker online in work pool 'bench-cuda'" in cuda
    command = " ".join(psutil_cmdline(distributed.service("worker-build")["pid"]))
    assert "worker start --pool build --type process" in command and "--limit 1" in command
    assert Path(distributed.service("worker-build")["log"]).is_file()


def trigger_tiny_llama(distributed: Distributed) -> subprocess.Popen[str]:
    """Start one run of the build deployment for tiny-llama's fp32, from another process."""
    trigger = (
        "from prefect.deployments import run_deployment\n"
        "run = run_deployment('slmops-build-distributed/nightly', parameters={'variants': ['tiny-llama'], "
        f"'recipes': ['fp32']}}, timeout={RUN_TIMEOUT_S})\n"
        "print(run.id, run.state.type.value)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", trigger],
        env=distributed.client_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_build(distributed: Distributed, started: subprocess.Popen[str]) -> None:
    """The triggered run ends (bounded) COMPLETED; else the control and build workers' logs are shown."""
    try:
        out, err = started.communicate(timeout=RUN_TIMEOUT_S + 60)
    finally:
        started.kill()
    assert started.returncode == 0, out + err
    state = out.split()[-1]
    logs = {p: Path(distributed.service(f"worker-{p}")["log"]).read_text(errors="replace") for p in ("slmops", "build")}
    assert state == "COMPLETED", f"{out}\n{logs['slmops'][-3000:]}\n{logs['build'][-3000:]}"


def build_tiny_llama(distributed: Distributed) -> None:
    """One run of the build deployment for tiny-llama's fp32, waited for (bounded)."""
    wait_for_build(distributed, trigger_tiny_llama(distributed))


def psutil_cmdline(pid: int) -> list[str]:
    import psutil

    return list(psutil.Process(pid).cmdline())


def test_a_build_run_fans_out_to_the_build_worker_and_reports_the_unmeasured_device(distributed: Distributed) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterName

    from slmops.names import device_bench_tag, device_metric, registered_model_name
    from slmops.stack import pools

    env = distributed.client_env
    declared = subprocess.run(
        [sys.executable, "-m", "flows.deploy", "--distributed"], env=env, capture_output=True, text=True, timeout=300
    )
    assert declared.returncode == 0, declared.stdout + declared.stderr
    with prefect_client(distributed) as api:
        build = api.read_deployment_by_name("slmops-build-distributed/nightly")
        variant = api.read_deployment_by_name("slmops-build-variant/variant")
    assert (build.work_pool_name, variant.work_pool_name) == ("slmops", "build")
    assert build.concurrency_limit == 1 or (
        build.global_concurrency_limit and build.global_concurrency_limit.limit == 1
    )
    assert [s.schedule.cron for s in build.schedules] == ["0 3 * * *"]  # pipeline.yaml's deploy.cron
    assert build.entrypoint == "flows.distributed.build_distributed" and build.pull_steps in (None, [])
    # every run sends heartbeats, and one without any for deploy.crashed_after_s is marked Crashed
    heartbeat = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
    assert build.job_variables == variant.job_variables == {"env": heartbeat}
    with prefect_client(distributed) as api:
        zombies = api.read_automations_by_name(pools.ZOMBIE_AUTOMATION)
    assert len(zombies) == 1 and zombies[0].enabled
    assert zombies[0].trigger.within.total_seconds() == 60  # type: ignore[union-attr]  # an EventTrigger

    build_tiny_llama(distributed)
    with prefect_client(distributed) as api:
        child = api.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["build[tiny-llama]"])))
        table = api.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["slmops-distributed-build"]))
        )
    assert len(child) == 1 and child[0].state is not None and child[0].state.is_completed()
    assert str(child[0].parent_task_run_id) and child[0].work_pool_name == "build"
    rows = {row["variant"]: row["outcome"] for row in json.loads(str(table[0].data))}
    assert rows["tiny-llama"] == "built" and rows["device cpu-1t"] == "worker online"
    assert rows["device cuda"].startswith("not measured: no worker online in work pool 'bench-cuda'")
    # the build worker built in its own folder; nothing was written where the CLI's environment points
    worker_home = distributed.dir / "workers" / "build"
    assert (worker_home / "artifacts" / "candidates" / "tiny-llama" / "fp32").is_dir()
    assert not (distributed.home / "artifacts").exists()
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    model = registered_model_name("causal-lm")
    versions = client.search_model_versions(f"name='{model}'")
    seen = [(v.version, v.run_id, v.tags) for v in versions]
    assert len(versions) == 1 and versions[0].run_id, seen  # registered through the PostgreSQL-backed server
    # the cpu-1t benchmark worker pulled the version into its own cache, verified it and logged to the same run
    run = client.get_run(versions[0].run_id)
    assert run.data.tags[device_bench_tag("cpu-1t")] == "measured"
    assert run.data.metrics[device_metric("decode_tok_s", "cpu-1t")] > 0
    assert run.data.metrics[device_metric("peak_rss_mb", "cpu-1t")] > 0
    assert run.data.metrics[device_metric("machine.load_before", "cpu-1t")] >= 0  # how busy the device was
    # the build worker gated and registered without measuring: its machine is no device profile's
    assert not [k for k in run.data.metrics if k.startswith("bench.") and not k.startswith("bench.cpu-1t.")]
    assert run.data.metrics["gate.passed"] == 1 and "quality.ppl_ratio" in run.data.metrics
    assert device_bench_tag("cuda") not in run.data.tags  # its pool has no worker: nothing ran, nothing logged
    cached = distributed.dir / "workers" / "bench-cpu-1t" / "cache" / "models" / model
    (pulled,) = cached.glob(f"{versions[0].version}-*")  # <version>-<digest>
    assert (pulled / "MLmodel").is_file()
    assert not (distributed.dir / "workers" / "bench-cpu-1t" / "artifacts" / "candidates").exists()
    with prefect_client(distributed) as api:
        bench = api.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"bench[cpu-1t] {model} v1"]))
        )
    assert len(bench) == 1 and bench[0].work_pool_name == "bench-cpu-1t" and bench[0].state.is_completed()


def test_the_alias_loads_over_http_and_a_second_identical_run_registers_nothing(
    distributed: Distributed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from slmops import load
    from slmops.names import registered_model_name
    from tests.conftest import apply_env
    from tests.support.mlflowserver import forget_mlflow_uris

    uri = distributed.client_env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model = registered_model_name("causal-lm")
    before = sorted((v.version, v.run_id) for v in client.search_model_versions(f"name='{model}'"))
    assert client.get_registered_model(model).aliases == {"chat-test": before[0][0]}  # set by the build's recommend
    apply_env(monkeypatch, {**distributed.client_env, "SLMOPS_CACHE_DIR": str(distributed.home / "client-cache")})
    try:
        text = load("chat-test").generate("The sun", max_tokens=4, seed=1)
    finally:
        forget_mlflow_uris()
    assert isinstance(text, str) and text  # resolved over REST, downloaded through the artifact proxy
    build_tiny_llama(distributed)
    after = sorted((v.version, v.run_id) for v in client.search_model_versions(f"name='{model}'"))
    assert after == before  # the same candidate digest: the version is reused, not registered again
    assert client.get_registered_model(model).aliases == {"chat-test": before[0][0]}


def bench_runs(distributed: Distributed, name: str) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with prefect_client(distributed) as api:
        return list(api.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))))


def test_a_benchmark_worker_killed_mid_run_is_started_again_and_the_run_completes(distributed: Distributed) -> None:
    """The cpu-1t benchmark worker dies (SIGKILL, with its flow run) while it measures; `slmops stack up` starts
    that worker again and nothing else. The dead run, silent, is marked Crashed by the zombie automation; the
    variant run starts the benchmark again, the new worker measures it, and the build completes: the same
    version (nothing registered again), measured, the alias unmoved."""
    from mlflow.tracking import MlflowClient
    from prefect.client.schemas.objects import StateType

    from slmops.names import device_bench_tag, registered_model_name

    uri = distributed.client_env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model = registered_model_name("causal-lm")
    before = sorted((v.version, v.run_id) for v in client.search_model_versions(f"name='{model}'"))
    name = f"bench[cpu-1t] {model} v{before[0][0]}"
    seen = {r.id for r in bench_runs(distributed, name)}
    pids = {s["name"]: s["pid"] for s in distributed.status["services"]}
    # A tiny model measures in half a second, and its whole benchmark run took 2.3 s after it showed RUNNING on a
    # fast CPU, so the kill below, 2 s in, raced the run's end (and lost: COMPLETED). More repeats for this build
    # only keep the benchmark measuring for several seconds (3.4 ms each, measured 2026-12-01).
    pipeline_yaml = Path(distributed.env["SLMOPS_CONFIG_DIR"]) / "pipeline.yaml"
    original = pipeline_yaml.read_text()
    slow = yaml.safe_load(original)
    slow["benchmark"]["repeats"] = 2500
    pipeline_yaml.write_text(yaml.safe_dump(slow, sort_keys=False))
    started = trigger_tiny_llama(distributed)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        running = []
        while not running and time.monotonic() < deadline:
            running = [
                r for r in bench_runs(distributed, name) if r.id not in seen and r.state_type == StateType.RUNNING
            ]
            time.sleep(0.2)
        assert running, f"no new run {name!r} started running within {RUN_TIMEOUT_S} s"
        time.sleep(2)  # its first heartbeat, sent as it starts, reaches the server
        worker = psutil.Process(pids["worker-bench-cpu-1t"])
        measuring, doomed = False, [worker]
        while not measuring and time.monotonic() < deadline:  # killed while its benchmark subprocess measures
            doomed = [worker, *worker.children(recursive=True)]
            measuring = any("slmops.benchmark.worker" in " ".join(_cmdline(p)) for p in doomed)
            time.sleep(0.05)
        assert measuring, f"no benchmark subprocess under the cpu-1t worker within {RUN_TIMEOUT_S} s"
        for proc in doomed:
            # the bench stage's first subprocess only warms the optimized-graph cache and may end between the
            # scan above and here; killing the worker itself is what the test needs
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(doomed, timeout=30)
        up = stack_cli("up", env=distributed.env)
        assert up.returncode == 0, up.stdout + up.stderr
        status = stack_cli("status", "--json", env=distributed.env, timeout=60)
        after = {s["name"]: s for s in json.loads(status.stdout)["services"]}
        assert all(s["state"] == "running" for s in after.values()), after
        restarted = after["worker-bench-cpu-1t"]["pid"]
        assert restarted != pids["worker-bench-cpu-1t"]
        assert {n: s["pid"] for n, s in after.items() if n != "worker-bench-cpu-1t"} == {
            n: p for n, p in pids.items() if n != "worker-bench-cpu-1t"
        }  # the servers and the other workers, and the build run on them, kept running
        distributed.status["services"] = list(after.values())
        wait_for_build(distributed, started)
    finally:
        started.kill()
        pipeline_yaml.write_text(original)
    runs = {r.id: r for r in bench_runs(distributed, name) if r.id not in seen}
    assert runs[running[0].id].state_type == StateType.CRASHED  # by the automation: no heartbeat for 60 s
    assert "no heartbeat" in str(runs[running[0].id].state.message)
    assert [r.state_type for r in runs.values()].count(StateType.COMPLETED) == 1  # the second attempt
    assert sorted((v.version, v.run_id) for v in client.search_model_versions(f"name='{model}'")) == before
    latest = client.get_model_version(model, before[0][0]).tags["slmops.latest_run"]
    assert client.get_run(latest).data.tags[device_bench_tag("cpu-1t")] == "measured"
    assert client.get_registered_model(model).aliases == {"chat-test": before[0][0]}


def test_a_run_whose_worker_died_starting_it_is_crashed_and_a_run_without_heartbeats_is_not(
    distributed: Distributed,
) -> None:
    """A run left Pending (a worker took it and died starting the flow's process) is marked Crashed by the zombie
    automation after deploy.crashed_after_s (60 s here), instead of holding its pool's slot until the build stops
    waiting (bench_wait_s); a run that went on to Running and sends no heartbeat (an in-process flow against this
    server) is left alone. The runs are the benchmark deployment's, put in those states through the API; neither is
    due, so no live worker takes them."""
    from datetime import UTC, datetime, timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Pending, Running, Scheduled

    later = datetime.now(UTC) + timedelta(days=1)
    with prefect_client(distributed) as api:
        deployment = api.read_deployment_by_name("slmops-bench/cpu-1t")
        runs = {}
        for name, states in (("orphaned", [Pending]), ("in-process", [Pending, Running])):
            run = api.create_flow_run_from_deployment(
                deployment.id,
                parameters={"model": "heartbeat-test", "version": "1", "profile": "cpu-1t"},  # never run
                state=Scheduled(scheduled_time=later),
                name=f"heartbeat-test-{name}",
            )
            for state in states:
                api.set_flow_run_state(run.id, state(), force=True)
            runs[name] = run.id
        deadline = time.monotonic() + 60 + RUN_TIMEOUT_S  # the automation's window, then its evaluation's delay
        orphaned = api.read_flow_run(runs["orphaned"]).state
        while time.monotonic() < deadline and not (orphaned is not None and orphaned.is_final()):
            time.sleep(2)
            orphaned = api.read_flow_run(runs["orphaned"]).state
        time.sleep(15)  # the automation's next evaluations, which would have crashed both together
        in_process = api.read_flow_run(runs["in-process"]).state
        api.set_flow_run_state(runs["in-process"], Cancelled(), force=True)  # it stands for nothing running
    assert orphaned is not None and orphaned.type == StateType.CRASHED, orphaned
    assert "no heartbeat for 60 s" in str(orphaned.message)
    assert in_process is not None and in_process.type == StateType.RUNNING, in_process


def test_down_stops_the_workers_and_their_flow_runs(distributed: Distributed) -> None:
    """Last in the module: `down` leaves no process of the stack, workers and their children included."""
    pids = [s["pid"] for s in distributed.status["services"]]
    before = tree(pids)
    down = stack_cli("down", env=distributed.env, timeout=300)
    assert down.returncode == 0, down.stderr
    assert running(before) == set()
    assert of_stack(distributed.dir) == set()
