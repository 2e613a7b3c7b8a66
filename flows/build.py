"""The build flow: fetch -> export -> quantize -> evaluate -> benchmark -> register per variant, then recommend.

Run it with ``python -m flows.build [VARIANT ...]`` (``make run`` does), or schedule it
with ``python -m flows.deploy``. Tasks run one at a time so benchmarks never share the CPU.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from slmops import pipeline
from slmops.cli import report
from slmops.project import Project
from slmops.results import BenchReport, GateReport, Recommendations, RegistryRecord


@task(name="fetch", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def fetch(variant: str) -> dict[str, Any]:
    with report.stage("fetch", variant) as progress:
        return progress.done(pipeline.fetch(Project.load(), variant))


@task(name="export", cache_policy=NO_CACHE)
def export(variant: str) -> dict[str, Any]:
    with report.stage("export", variant) as progress:
        return progress.done(pipeline.export(Project.load(), variant))


@task(name="quantize", cache_policy=NO_CACHE)
def quantize(variant: str) -> dict[str, Any]:
    project = Project.load()
    with report.stage("quantize", variant, steps=len(project.config.selection[variant].recipes)) as progress:
        return progress.done(pipeline.quantize(project, variant, on_done=progress.advance))


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(variant: str) -> GateReport:
    with report.stage("evaluate", variant) as progress:
        return progress.done(pipeline.evaluate(Project.load(), variant))


@task(name="benchmark", cache_policy=NO_CACHE)
def benchmark(variant: str) -> dict[str, BenchReport]:
    project = Project.load()
    with report.stage("benchmark", variant, steps=len(project.config.selection[variant].recipes)) as progress:
        return progress.done(pipeline.benchmark(project, variant, on_done=progress.advance))


@task(name="register", cache_policy=NO_CACHE)
def register(variant: str) -> RegistryRecord:
    with report.stage("register", variant) as progress:
        return progress.done(pipeline.register(Project.load(), variant))


@task(name="recommend", cache_policy=NO_CACHE)
def recommend() -> Recommendations:
    with report.stage("recommend") as progress:
        return progress.done(pipeline.recommend(Project.load()))


# prefect types an argument-less ThreadPoolTaskRunner() as ThreadPoolTaskRunner[Never]
@flow(name="slmops-build", task_runner=ThreadPoolTaskRunner(max_workers=1))  # type: ignore[arg-type]  # see the line above
def build(variants: list[str] | None = None) -> Recommendations:
    """Build, gate, benchmark and register the selected variants, then set the use-case aliases."""
    project = Project.load()  # fail fast on bad configs, before any work
    selected = variants or list(project.config.selection)
    for variant in selected:
        project.selected(variant)
    benched: list[PrefectFuture[dict[str, BenchReport]]] = []
    registered: list[PrefectFuture[RegistryRecord]] = []
    # prefect's typed submit() overloads leave out wait_for unless return_state is passed: it is said explicitly
    for variant in selected:
        fetched = fetch.submit(variant, return_state=False)
        exported = export.submit(variant, return_state=False, wait_for=[fetched])
        quantized = quantize.submit(variant, return_state=False, wait_for=[exported])
        evaluated = evaluate.submit(variant, return_state=False, wait_for=[quantized])
        benched.append(benchmark.submit(variant, return_state=False, wait_for=[evaluated]))
        registered.append(register.submit(variant, return_state=False, wait_for=[evaluated, benched[-1]]))
    decisions = recommend.submit(return_state=False, wait_for=registered).result()
    report.warn_skipped_profiles(b.result() for b in benched)  # once per build, not once per candidate
    return decisions


if __name__ == "__main__":
    from slmops.cli.common import cli_errors, console, setup_logging

    setup_logging(0)  # slmops's own log format and SLMOPS_LOG_LEVEL, as under the `slmops` command
    decisions = cli_errors(lambda: build(sys.argv[1:] or None))()
    chosen = sum(d.chosen is not None for d in decisions.usecases.values())
    console.print(f"built; {chosen} of {len(decisions.usecases)} use cases have a model")
