"""The build flow: fetch -> export -> quantize -> evaluate -> benchmark -> register per variant, then recommend.

Run it with ``python -m flows.build [VARIANT ...]`` (``make run`` does), or schedule it
with ``python -m flows.deploy``. Tasks run one at a time so benchmarks never share the CPU.
"""

from __future__ import annotations

import sys
from typing import Any

from slmops.results import BenchReport, GateReport, Recommendations, RegistryRecord

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from slmops import pipeline
from slmops.project import Project


@task(name="fetch", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def fetch(variant: str) -> dict[str, Any]:
    return pipeline.fetch(Project.load(), variant)


@task(name="export", cache_policy=NO_CACHE)
def export(variant: str) -> dict[str, Any]:
    return pipeline.export(Project.load(), variant)


@task(name="quantize", cache_policy=NO_CACHE)
def quantize(variant: str) -> dict[str, Any]:
    return pipeline.quantize(Project.load(), variant)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(variant: str) -> GateReport:
    return pipeline.evaluate(Project.load(), variant)


@task(name="benchmark", cache_policy=NO_CACHE)
def benchmark(variant: str) -> dict[str, BenchReport]:
    return pipeline.benchmark(Project.load(), variant)


@task(name="register", cache_policy=NO_CACHE)
def register(variant: str) -> RegistryRecord:
    return pipeline.register(Project.load(), variant)


@task(name="recommend", cache_policy=NO_CACHE)
def recommend() -> Recommendations:
    return pipeline.recommend(Project.load())


@flow(name="slmops-build", task_runner=ThreadPoolTaskRunner(max_workers=1))
def build(variants: list[str] | None = None) -> Recommendations:
    """Build, gate, benchmark and register the selected variants, then set the use-case aliases."""
    project = Project.load()  # fail fast on bad configs, before any work
    selected = variants or list(project.config.selection)
    for variant in selected:
        project.selected(variant)
    registered = []
    for variant in selected:
        fetched = fetch.submit(variant)
        exported = export.submit(variant, wait_for=[fetched])
        quantized = quantize.submit(variant, wait_for=[exported])
        evaluated = evaluate.submit(variant, wait_for=[quantized])
        benched = benchmark.submit(variant, wait_for=[evaluated])
        registered.append(register.submit(variant, wait_for=[evaluated, benched]))
    return recommend.submit(wait_for=registered).result()


if __name__ == "__main__":
    from slmops.cli.common import cli_errors, console

    decisions = cli_errors(lambda: build(sys.argv[1:] or None))()
    chosen = sum(d.chosen is not None for d in decisions.usecases.values())
    console.print(f"built; {chosen} of {len(decisions.usecases)} use cases have a model")
