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

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.deployments.flow_runs import arun_deployment, run_deployment
from prefect.task_runners import ThreadPoolTaskRunner

from flows.build import STAGES, _project, _slmops_logs_in_flow_run, recommend
from slmops import pipeline
from slmops.cli import report
from slmops.errors import BuildError
from slmops.project import Project
from slmops.results import Recommendations
from slmops.stack import pools

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

logger = logging.getLogger("slmops.flows")

BUILD_FLOW = "slmops-build-distributed"
VARIANT_FLOW = "slmops-build-variant"
VARIANT_DEPLOYMENT = "variant"
BENCH_FLOW = "slmops-bench"  # one deployment per device profile, named after it, on the profile's pool


@flow(name=VARIANT_FLOW, flow_run_name="build[{variant}]", task_runner=ThreadPoolTaskRunner(max_workers=1))  # type: ignore[arg-type]  # as flows.build
def build_variant(variant: str, recipes: list[str] | None = None, devices: list[str] | None = None) -> dict[str, Any]:
    """Fetch, export, quantize, gate, benchmark and register one variant in this worker's own folders, then have
    each device's benchmark worker measure every registered candidate (pulled from the registry).

    Args:
        variant: The variant id, e.g. "smollm2-135m-instruct".
        recipes: Recipes instead of pipeline.yaml's (the reference recipe is always added).
        devices: Device profiles whose benchmark pools have a worker; each measures the registered candidates.
    """
    project = _project(variant, recipes)  # fails on a bad variant or recipe before any work
    with _slmops_logs_in_flow_run(), pipeline.build_lock(project, what=f"build flow {variant} on a worker"):
        record: Any = None
        for stage in STAGES:
            record = stage(variant, recipes)
    failed = []
    for recipe, candidate in record.candidates.items():
        if candidate.version is None:
            continue  # failed its gate: logged, never registered, so never benchmarked on a device
        for profile in devices or []:
            parameters = {"model": candidate.model, "version": candidate.version, "profile": profile}
            run = cast("FlowRun", run_deployment(f"{BENCH_FLOW}/{profile}", parameters=parameters, as_subflow=True))
            if not (run.state and run.state.is_completed()):
                failed.append(f"{recipe} on {profile}: run {run.name} ended {run.state.name if run.state else '?'}")
    if failed:
        raise BuildError(f"{variant}: device benchmarks failed: {'; '.join(failed)}")
    return dict(record.model_dump(mode="json"))  # the RegistryRecord of the register stage


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
