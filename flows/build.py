"""The build flow: fetch -> export -> quantize -> evaluate -> benchmark -> register per variant, then recommend.

Run it with ``python -m flows.build [VARIANT ...]`` (``make run`` does), or schedule it
with ``python -m flows.deploy``. Tasks run one at a time so benchmarks never share the CPU.
"""

from __future__ import annotations

import sys
from typing import Any, cast

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from slmops import dvcsync, pipeline
from slmops.cli import report
from slmops.errors import BuildError
from slmops.project import Project
from slmops.results import BenchReport, GateReport, Recommendations, RegistryRecord


# no Prefect retries: the fetch source retries transient Hub errors itself, and the rest are permanent
@task(name="fetch", task_run_name="fetch[{variant}]", cache_policy=NO_CACHE)
def fetch(variant: str) -> dict[str, Any]:
    with report.stage("fetch", variant) as progress:
        return progress.done(pipeline.fetch(Project.load(), variant))


@task(name="export", task_run_name="export[{variant}]", cache_policy=NO_CACHE)
def export(variant: str) -> dict[str, Any]:
    with report.stage("export", variant) as progress:
        return progress.done(pipeline.export(Project.load(), variant))


@task(name="quantize", task_run_name="quantize[{variant}]", cache_policy=NO_CACHE)
def quantize(variant: str) -> dict[str, Any]:
    project = Project.load()
    with report.stage("quantize", variant, steps=len(project.config.selection[variant].recipes)) as progress:
        return progress.done(pipeline.quantize(project, variant, on_done=progress.advance))


@task(name="evaluate", task_run_name="evaluate[{variant}]", cache_policy=NO_CACHE)
def evaluate(variant: str) -> GateReport:
    with report.stage("evaluate", variant) as progress:
        return progress.done(pipeline.evaluate(Project.load(), variant))


@task(name="benchmark", task_run_name="benchmark[{variant}]", cache_policy=NO_CACHE)
def benchmark(variant: str) -> dict[str, BenchReport]:
    project = Project.load()
    with report.stage("benchmark", variant, steps=len(project.config.selection[variant].recipes)) as progress:
        return progress.done(pipeline.benchmark(project, variant, on_done=progress.advance))


@task(name="register", task_run_name="register[{variant}]", cache_policy=NO_CACHE)
def register(variant: str) -> RegistryRecord:
    with report.stage("register", variant) as progress:
        return progress.done(pipeline.register(Project.load(), variant))


@task(name="recommend", task_run_name="recommend", cache_policy=NO_CACHE)
def recommend() -> Recommendations:
    with report.stage("recommend") as progress:
        return progress.done(pipeline.recommend(Project.load()))


# The stages of one variant, in order; each is a Prefect task named after the variant (fetch[<variant>]).
STAGES = (fetch, export, quantize, evaluate, benchmark, register)


# prefect types an argument-less ThreadPoolTaskRunner() as ThreadPoolTaskRunner[Never]
@flow(name="slmops-build", task_runner=ThreadPoolTaskRunner(max_workers=1))  # type: ignore[arg-type]  # see above
def build(variants: list[str] | None = None) -> Recommendations:
    """Build, gate, benchmark and register the selected variants, then set the use-case aliases.

    Variants are built one after another (benchmarks must not share the CPU). A variant whose stage fails
    is reported and skipped; the others are still built and recommended from. The flow then fails with a
    BuildError naming each failed variant, its stage and the cause.
    """
    project = Project.load()  # fail fast on bad configs, before any work
    selected = variants or list(project.config.selection)
    for variant in selected:
        project.selected(variant)
    benched: list[dict[str, BenchReport]] = []
    failed: dict[str, str] = {}
    for variant in selected:
        for stage in STAGES:
            try:
                result = stage(variant)
            except Exception as exc:  # any failure of one variant's stage: report it, build the others
                failed[variant] = f"{stage.name} failed: {exc}"
                break
            if stage is benchmark:
                benched.append(cast("dict[str, BenchReport]", result))
    decisions = recommend()
    # the variants built here, recorded in dvc.lock: `dvc repro` after this flow finds them up to date
    dvcsync.record_build(project, [v for v in selected if v not in failed], recommend=True)
    report.warn_skipped_profiles(benched)  # once per build, not once per candidate
    if failed:
        raise BuildError(
            f"{len(failed)} of {len(selected)} variants failed: "
            + "; ".join(f"{variant}: {why}" for variant, why in failed.items())
        )
    return decisions


if __name__ == "__main__":
    from slmops.cli.common import cli_errors, console, setup_logging

    setup_logging(0)  # slmops's own log format and SLMOPS_LOG_LEVEL, as under the `slmops` command
    decisions = cli_errors(lambda: build(sys.argv[1:] or None))()
    chosen = sum(d.chosen is not None for d in decisions.usecases.values())
    console.print(f"built; {chosen} of {len(decisions.usecases)} use cases have a model")
