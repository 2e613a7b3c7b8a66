"""The build on Prefect workers: one run per variant on the ``build`` work pool, then recommend.

``python -m flows.deploy --distributed`` declares the work pools and these deployments; ``slmops stack up``
starts a worker per pool. The build run (pool ``slmops``, on the schedule of pipeline.yaml's ``deploy:``)
first asks Prefect which pools have an online worker: no build worker fails the run at once, naming the
pool; a device profile whose benchmark pool has no worker is reported as not measured, with the reason,
and never waited for. It then starts one ``slmops-build-variant`` run per variant (``run_deployment``,
as subflows), which the build workers take one at a time each, every worker in its own folders; what
crosses between them goes through the MLflow server. ``python -m flows.build`` stays the in-process build.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from prefect import flow, task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.deployments.flow_runs import arun_deployment, run_deployment
from prefect.states import Cancelled, Cancelling
from prefect.task_runners import ThreadPoolTaskRunner

from flows.build import _project, _slmops_logs_in_flow_run, evaluate, export, fetch, quantize, recommend
from slmops import pipeline
from slmops.cli import report
from slmops.errors import BuildError
from slmops.project import DeployConfig, Project
from slmops.results import Recommendations, RegistryRecord
from slmops.stack import pools

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

logger = logging.getLogger("slmops.flows")

BUILD_FLOW = "slmops-build-distributed"
VARIANT_FLOW = "slmops-build-variant"
VARIANT_DEPLOYMENT = "variant"
BENCH_FLOW = "slmops-bench"  # one deployment per device profile, named after it, on the profile's pool


@task(name="register", task_run_name="register[{variant}]", cache_policy=NO_CACHE)
def register_gated(variant: str, recipes: list[str] | None = None) -> RegistryRecord:
    """Log each gated candidate to MLflow with its manifest and register those that passed, without numbers of
    this build machine: the devices' benchmark workers measure them."""
    with report.stage("register", variant) as progress:
        return progress.done(pipeline.register(_project(variant, recipes), variant, benchmarked=False))


# a build worker builds and gates; it never benchmarks (its CPU is no device profile's, and it may share the
# machine with a benchmark worker): each device's own worker measures the registered candidates
VARIANT_STAGES = (fetch, export, quantize, evaluate, register_gated)


@flow(name=VARIANT_FLOW, flow_run_name="build[{variant}]", task_runner=ThreadPoolTaskRunner(max_workers=1))  # type: ignore[arg-type]  # as flows.build
def build_variant(variant: str, recipes: list[str] | None = None, devices: list[str] | None = None) -> dict[str, Any]:
    """Fetch, export, quantize, gate and register one variant in this worker's own folders, then have each
    device's benchmark worker measure every registered candidate (pulled from the registry).

    A benchmark run that crashes (its worker died: the stack's automation marks a run without heartbeats
    Crashed) or fails is started again, up to ``deploy.bench_attempts`` runs; one still not finished after
    ``deploy.bench_wait_s`` is cancelled. Either way the device is reported not measured for that
    candidate, with the reason (tag ``slmops.bench.<profile>`` on its run), and the variant run fails
    naming it, while the other devices and variants go on.

    Args:
        variant: The variant id, e.g. "smollm2-135m-instruct".
        recipes: Recipes instead of pipeline.yaml's (the reference recipe is always added).
        devices: Device profiles whose benchmark pools have a worker; each measures the registered candidates.
    """
    project = _project(variant, recipes)  # fails on a bad variant or recipe before any work
    with _slmops_logs_in_flow_run(), pipeline.build_lock(project, what=f"build flow {variant} on a worker"):
        record: Any = None
        for stage in VARIANT_STAGES:
            record = stage(variant, recipes)
    deploy = project.config.deploy
    failed = []
    with _slmops_logs_in_flow_run():
        for recipe, candidate in record.candidates.items():
            if candidate.version is None:
                continue  # failed its gate: logged, never registered, so never benchmarked on a device
            for profile in devices or []:
                why = _bench_on_device(candidate.model, candidate.version, profile, deploy=deploy)
                if why is not None:
                    failed.append(f"{recipe} on {profile}: {why}")
                    pipeline.device_not_measured(project, candidate.model, candidate.version, profile, why)
    if failed:
        raise BuildError(f"{variant}: device benchmarks failed: {'; '.join(failed)}")
    return dict(record.model_dump(mode="json"))  # the RegistryRecord of the register stage


def _bench_on_device(model: str, version: str, profile: str, *, deploy: DeployConfig) -> str | None:
    """Run the profile's benchmark deployment on the version until a run completes (None) or the attempts are
    spent (why not, for the report)."""
    from prefect.client.schemas.objects import StateType

    outcomes = []
    for attempt in range(1, deploy.bench_attempts + 1):
        parameters = {"model": model, "version": version, "profile": profile}
        run = cast(
            "FlowRun",
            run_deployment(
                f"{BENCH_FLOW}/{profile}", parameters=parameters, as_subflow=True, timeout=deploy.bench_wait_s
            ),
        )
        state = run.state
        if state is not None and state.is_completed():
            return None
        if state is None or not state.is_final():  # queued or running past the wait: give its slot back
            stop = Cancelling if state is not None and state.is_running() else Cancelled  # a worker stops a running one
            with get_client(sync_client=True) as api:
                api.set_flow_run_state(run.id, stop(message=f"not finished within {deploy.bench_wait_s:.0f} s"))
            outcome = f"run {run.name} did not finish within {deploy.bench_wait_s:.0f} s"
        else:
            outcome = f"run {run.name} ended {state.name}" + (f": {state.message}" if state.message else "")
        outcomes.append(outcome)
        retry = state is not None and state.type in (StateType.CRASHED, StateType.FAILED)
        logger.warning(
            "%s v%s on %s, attempt %d of %d: %s%s",
            model,
            version,
            profile,
            attempt,
            deploy.bench_attempts,
            outcome,
            "; starting it again" if retry and attempt < deploy.bench_attempts else "",
        )
        if not retry:
            break
    return "; ".join(outcomes)


@flow(name=BENCH_FLOW, flow_run_name="bench[{profile}] {model} v{version}")
def bench_registered(model: str, version: str, profile: str) -> dict[str, Any]:
    """Measure a registered model version on this worker's device profile and log the numbers to its run.

    Args:
        model: The registered model, e.g. "slmops-causal-lm".
        version: Its version number.
        profile: The device profile (configs/devices.yaml) this worker's pool serves.
    """
    project = Project.load()
    with _slmops_logs_in_flow_run():
        report = pipeline.device_benchmark(project, model, version, profile)
    return {"profile": profile, "skipped": report.skipped().get(profile), "decode_tok_s": report.decode_tok_s}


def worker_reasons(profiles: list[str]) -> tuple[str | None, dict[str, str]]:
    """Why the build pool cannot run now (None: it can), and why each device profile's pool cannot."""
    with get_client(sync_client=True) as api:
        build = pools.missing_worker(api, pools.BUILD_POOL)
        devices = {p: why for p in profiles if (why := pools.missing_worker(api, pools.bench_pool(p))) is not None}
    return build, devices


@flow(name=BUILD_FLOW)
async def build_distributed(variants: list[str] | None = None, recipes: list[str] | None = None) -> Recommendations:
    """Build the selected variants on the build workers (one run per variant, in parallel), then recommend.

    Args:
        variants: Variant ids to build, e.g. ["smollm2-135m-instruct"]. Default: every variant selected in
            configs/pipeline.yaml.
        recipes: Recipes to build for each variant instead of those in pipeline.yaml; the reference recipe is
            always added.
    """
    configured = Project.load()  # fail fast on bad configs and parameters, before any run is started
    project = configured.narrowed(variants=variants, recipes=recipes) if variants or recipes else configured
    selected = list(project.config.selection)
    no_builder, not_measured = worker_reasons(project.config.benchmark.profiles)
    if no_builder is not None:
        raise BuildError(f"cannot build {', '.join(selected)}: {no_builder}")
    for profile, why in not_measured.items():
        logger.warning("device profile %s is not measured: %s", profile, why)
    measured = [p for p in project.config.benchmark.profiles if p not in not_measured]

    def fits(variant: str) -> list[str] | None:
        return list(project.config.selection[variant].recipes) if recipes else None

    runs = await asyncio.gather(
        *(
            arun_deployment(
                f"{VARIANT_FLOW}/{VARIANT_DEPLOYMENT}",
                # the recipes that apply to this variant (a one-variant narrowing refuses a recipe for another task)
                parameters={"variant": variant, "recipes": fits(variant), "devices": measured},
                as_subflow=True,
            )
            for variant in selected
        )
    )
    failed = {
        variant: f"run {run.name} ended {run.state.name if run.state else 'without a state'}"
        + (f": {run.state.message}" if run.state and run.state.message else "")
        for variant, run in zip(selected, runs, strict=True)
        if not (run.state and run.state.is_completed())
    }
    with _slmops_logs_in_flow_run():
        decisions = recommend()
    await _publish(decisions, selected, failed, not_measured, project.config.benchmark.profiles)
    if failed:
        raise BuildError(
            f"{len(failed)} of {len(selected)} variants failed: "
            + "; ".join(f"{variant}: {why}" for variant, why in failed.items())
        )
    return decisions


async def _publish(
    decisions: Recommendations,
    selected: list[str],
    failed: dict[str, str],
    not_measured: dict[str, str],
    profiles: list[str],
) -> None:
    await acreate_markdown_artifact(
        key="slmops-recommendations",
        markdown=report.recommendations_markdown(decisions),
        description="The model chosen per use case, and why",
    )
    rows = [{"variant": v, "outcome": failed.get(v, "built")} for v in selected]
    rows += [
        {
            "variant": f"device {p}",
            "outcome": f"not measured: {not_measured[p]}" if p in not_measured else "worker online",
        }
        for p in profiles
    ]
    await acreate_table_artifact(
        key="slmops-distributed-build", table=rows, description="Each variant's run and each device profile's pool"
    )
