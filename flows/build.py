"""The build flow: fetch -> export -> quantize -> evaluate -> benchmark -> register per variant, then recommend.

Run it with ``python -m flows.build [VARIANT ...] [--recipes R,R]`` (``make run`` does), or schedule it
with ``python -m flows.deploy``. Tasks run one at a time so benchmarks never share the CPU, and the
whole run holds the project's build lock, so a second build (another flow run, ``dvc repro``, a stage
command) waits for this one instead of overwriting its files.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from typing import Any, cast

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from slmops import dvcsync, pipeline
from slmops.cli import report
from slmops.cli.common import sigterm_watchdog
from slmops.errors import BuildError
from slmops.project import Project
from slmops.results import BenchReport, GateReport, Recommendations, RegistryRecord


def _project(variant: str | None = None, recipes: list[str] | None = None) -> Project:
    """The project as this build sees it: pipeline.yaml narrowed to the flow's variants and recipes."""
    project = Project.load()
    if variant is None and recipes is None:
        return project
    return project.narrowed(variants=[variant] if variant else None, recipes=recipes)


# no Prefect retries: the fetch source retries transient Hub errors itself, and the rest are permanent
@task(name="fetch", task_run_name="fetch[{variant}]", cache_policy=NO_CACHE)
def fetch(variant: str, recipes: list[str] | None = None) -> dict[str, Any]:
    with report.stage("fetch", variant) as progress:
        return progress.done(pipeline.fetch(_project(variant, recipes), variant))


@task(name="export", task_run_name="export[{variant}]", cache_policy=NO_CACHE)
def export(variant: str, recipes: list[str] | None = None) -> dict[str, Any]:
    with report.stage("export", variant) as progress:
        return progress.done(pipeline.export(_project(variant, recipes), variant))


@task(name="quantize", task_run_name="quantize[{variant}]", cache_policy=NO_CACHE)
def quantize(variant: str, recipes: list[str] | None = None) -> dict[str, Any]:
    project = _project(variant, recipes)
    with report.stage("quantize", variant, steps=len(project.config.selection[variant].recipes)) as progress:
        return progress.done(pipeline.quantize(project, variant, on_done=progress.advance))


@task(name="evaluate", task_run_name="evaluate[{variant}]", cache_policy=NO_CACHE)
def evaluate(variant: str, recipes: list[str] | None = None) -> GateReport:
    with report.stage("evaluate", variant) as progress:
        return progress.done(pipeline.evaluate(_project(variant, recipes), variant))


@task(name="benchmark", task_run_name="benchmark[{variant}]", cache_policy=NO_CACHE)
def benchmark(variant: str, recipes: list[str] | None = None) -> dict[str, BenchReport]:
    project = _project(variant, recipes)
    with report.stage("benchmark", variant, steps=len(project.config.selection[variant].recipes)) as progress:
        return progress.done(pipeline.benchmark(project, variant, on_done=progress.advance))


@task(name="register", task_run_name="register[{variant}]", cache_policy=NO_CACHE)
def register(variant: str, recipes: list[str] | None = None) -> RegistryRecord:
    with report.stage("register", variant) as progress:
        return progress.done(pipeline.register(_project(variant, recipes), variant))


@task(name="recommend", task_run_name="recommend", cache_policy=NO_CACHE)
def recommend() -> Recommendations:
    with report.stage("recommend") as progress:
        return progress.done(pipeline.recommend(Project.load()))


# The stages of one variant, in order; each is a Prefect task named after the variant (fetch[<variant>]).
STAGES = (fetch, export, quantize, evaluate, benchmark, register)


# prefect types an argument-less ThreadPoolTaskRunner() as ThreadPoolTaskRunner[Never]
@flow(name="slmops-build", task_runner=ThreadPoolTaskRunner(max_workers=1))  # type: ignore[arg-type]  # see above
def build(variants: list[str] | None = None, recipes: list[str] | None = None) -> Recommendations:
    """Build, gate, benchmark and register the selected variants, then set the use-case aliases.

    Variants are built one after another (benchmarks must not share the CPU). A variant whose stage fails
    is reported and skipped; the others are still built and recommended from. The flow then fails with a
    BuildError naming each failed variant, its stage and the cause. The run publishes three artifacts:
    the recommendations with their reasons, the quality gates and the benchmarks.

    Args:
        variants: Variant ids to build, e.g. ["smollm2-135m-instruct"]. Default: every variant selected in
            configs/pipeline.yaml. A catalog variant outside the selection is fetched from the Hub.
        recipes: Recipes to build for each variant, e.g. ["wo-int8"], instead of those in pipeline.yaml; the
            reference recipe is always added, and each recipe is used for the variants whose task it supports.
    """
    configured = Project.load()  # fail fast on bad configs and parameters, before any work
    project = configured.narrowed(variants=variants, recipes=recipes) if variants or recipes else configured
    selected = list(project.config.selection)
    with (
        sigterm_watchdog(),  # should Prefect's handler lose a SIGTERM, the build still stops
        _slmops_logs_in_flow_run(),
        pipeline.build_lock(project, what="build flow " + " ".join(selected)),
    ):
        gates: dict[str, GateReport] = {}
        benched: dict[str, dict[str, BenchReport]] = {}
        failed: dict[str, str] = {}
        for variant in selected:
            for stage in STAGES:
                try:
                    result = stage(variant, recipes)
                except Exception as exc:  # any failure of one variant's stage: report it, build the others
                    failed[variant] = f"{stage.name} failed: {exc}"
                    break
                if stage is evaluate:
                    gates[variant] = cast("GateReport", result)
                elif stage is benchmark:
                    benched[variant] = cast("dict[str, BenchReport]", result)
        decisions = recommend()
        report.warn_skipped_profiles(benched.values())  # once per build, not once per candidate
        _publish(decisions, gates, benched)
        if recipes is None:  # dvc.lock describes pipeline.yaml's recipes: a one-off recipe set is not recorded
            # the variants built here, recorded in dvc.lock: `dvc repro` after this flow finds them up to date
            built = [v for v in selected if v not in failed and v in configured.config.selection]
            dvcsync.record_build(configured, built, recommend=True)
    if failed:
        raise BuildError(
            f"{len(failed)} of {len(selected)} variants failed: "
            + "; ".join(f"{variant}: {why}" for variant, why in failed.items())
        )
    return decisions


def _publish(
    decisions: Recommendations, gates: dict[str, GateReport], benched: dict[str, dict[str, BenchReport]]
) -> None:
    """The build's outcome as Prefect artifacts (keyed, so the UI shows each one's history across builds)."""
    create_markdown_artifact(
        key="slmops-recommendations",
        markdown=report.recommendations_markdown(decisions),
        description="The model chosen per use case, and why",
    )
    create_markdown_artifact(
        key="slmops-gates", markdown=report.gates_markdown(gates), description="Quality gate per candidate"
    )
    create_table_artifact(
        key="slmops-benchmarks",
        table=report.bench_rows(benched),
        description="Headline benchmark numbers per candidate (first device profile that ran)",
    )


class _InRun(logging.Filter):
    """Only records logged inside a flow or task run: threads without a run context have no run to log to."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.context import FlowRunContext, TaskRunContext

        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class _ConsoleLevel(logging.Filter):
    """On the console's handlers during a flow run: ``slmops`` records below the console's level are dropped
    (the slmops logger is opened to INFO for the flow-run log); progress lines stay, as the CLI shows them."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("slmops") or record.name.startswith("slmops.progress"):
            return True
        return record.levelno >= self.level


@contextlib.contextmanager
def _slmops_logs_in_flow_run() -> Iterator[None]:
    """Send the ``slmops`` loggers' INFO records to the flow-run log for the run; the console keeps its level
    (SLMOPS_LOG_LEVEL, or -v), with progress lines at INFO.

    Same as PREFECT_LOGGING_EXTRA_LOGGERS=slmops, without having to set it before Prefect is imported; when it
    is set, Prefect's handler is already there and nothing is added.
    """
    from prefect.logging.handlers import APILogHandler

    from slmops.settings import get_settings

    log, progress = logging.getLogger("slmops"), logging.getLogger("slmops.progress")
    levels = log.level, progress.level
    console = log.level if log.level != logging.NOTSET else logging.getLevelName(get_settings().log_level)
    log.setLevel(min(console, logging.INFO))
    progress.setLevel(logging.INFO)
    handler = None
    if not any(isinstance(h, APILogHandler) for h in log.handlers):
        handler = APILogHandler()
        handler.addFilter(_InRun())
        log.addHandler(handler)
    console_filter = _ConsoleLevel(console)
    console_handlers = [h for h in logging.getLogger().handlers if not isinstance(h, APILogHandler)]
    for h in console_handlers:
        h.addFilter(console_filter)
    try:
        yield
    finally:
        for h in console_handlers:
            h.removeFilter(console_filter)
        if handler is not None:
            log.removeHandler(handler)
        log.setLevel(levels[0])
        progress.setLevel(levels[1])


def main(argv: list[str] | None = None) -> None:
    from slmops.cli.common import cli_errors, console, setup_logging, stop_children_on_sigterm

    parser = argparse.ArgumentParser(prog="python -m flows.build", description="Build, gate, benchmark and register.")
    parser.add_argument("variants", nargs="*", help="Variant ids (default: the selection in configs/pipeline.yaml).")
    parser.add_argument("--recipes", help="Comma-separated recipes, instead of pipeline.yaml's.")
    args = parser.parse_args(argv)
    recipes = [r for r in (args.recipes or "").split(",") if r] or None
    setup_logging(0)  # slmops's own log format and SLMOPS_LOG_LEVEL, as under the `slmops` command
    stop_children_on_sigterm()  # Prefect's temporary API server is a child process: stop it with the build
    decisions = cli_errors(lambda: build(args.variants or None, recipes))()
    chosen = sum(d.chosen is not None for d in decisions.usecases.values())
    console.print(f"built; {chosen} of {len(decisions.usecases)} use cases have a model")


if __name__ == "__main__":
    main()
