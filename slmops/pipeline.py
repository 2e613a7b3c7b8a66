"""The pipeline stages as functions of a :class:`~slmops.project.Project` and a variant id.

The CLI (and so DVC) and the Prefect flow call exactly these, so both build the same thing.
Each stage holds the project's build lock (:func:`build_lock`) while it runs, so a second build
waits for the first or fails with a clear message instead of overwriting its files.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from slmops import artifacts
from slmops.artifacts import MANIFEST_NAME
from slmops.errors import MissingResultError
from slmops.project import Project
from slmops.results import (
    BenchReport,
    GateReport,
    Recommendations,
    RegisteredCandidate,
    RegistryRecord,
    read_result,
    write_result,
)

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def build_lock(project: Project, *, what: str) -> Iterator[None]:
    """Hold the build lock on the project's artifacts folder (see :func:`slmops.artifacts.build_lock`).

    Re-entrant within the process and its children; waits ``SLMOPS_BUILD_LOCK_WAIT_S`` at most for another
    build, then raises BuildLockError naming it.
    """
    settings = project.settings
    with artifacts.build_lock(
        project.root, what=what, wait_s=settings.build_lock_wait_s, owner=settings.build_lock_owner
    ):
        yield


def _locked(fn: F) -> F:
    """Run the stage ``fn(project, [variant], ...)`` under the build lock."""

    @functools.wraps(fn)
    def wrapper(project: Project, *args: Any, **kwargs: Any) -> Any:
        what = " ".join(["slmops", {"benchmark": "bench"}.get(fn.__name__, fn.__name__), *map(str, args[:1])])
        with build_lock(project, what=what):
            return fn(project, *args, **kwargs)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature F promises


@_locked
def fetch(
    project: Project,
    variant_id: str,
    *,
    source: str | None = None,
    revision: str | None = None,
    offline: bool | None = None,
) -> dict[str, Any]:
    """Fetch a variant: by its selection entry if selected, else from the Hub at the catalog's revision."""
    from slmops.fetch import FetchConfig
    from slmops.fetch import fetch as run_fetch

    variant = project.catalog.get(variant_id)
    sel = project.config.selection.get(variant_id)
    config = FetchConfig(
        source=source or (sel.source if sel else "hub"),
        revision=revision or (sel.revision if sel else None),
        offline=offline,
        trusted_remote_code=project.remote_code,
    )
    manifest = run_fetch(variant, out=project.fetch_dir(variant_id), config=config, settings=project.settings)
    return {
        "variant": variant_id,
        "source": manifest.source,
        "revision": manifest.revision,
        "files": len(manifest.files),
    }


@_locked
def export(project: Project, variant_id: str) -> dict[str, Any]:
    from slmops.export import export as run_export

    variant, sel = project.selected(variant_id)
    _require(project.fetch_dir(variant_id), f"slmops fetch {variant_id}")
    manifest = run_export(
        variant,
        src=project.fetch_dir(variant_id),
        out=project.export_dir(variant_id),
        exporter=sel.exporter,
        validation=project.config.export_validation,
    )
    checked = {name: row["max_abs_diff"] for name, row in manifest.info["validation"].items()}
    return {"variant": variant_id, "files": len(manifest.files), "max_abs_diff": checked}


@_locked
def quantize(project: Project, variant_id: str, *, on_done: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build every selected recipe's candidate of the variant; ``on_done(recipe)`` after each."""
    from slmops.quantize import quantize as run_quantize

    variant, sel = project.selected(variant_id)
    _require(project.export_dir(variant_id), f"slmops export {variant_id}")
    done = {}
    for name in sel.recipes:
        manifest = run_quantize(
            variant,
            project.recipes[name],
            src=project.export_dir(variant_id),
            out=project.candidate_dir(variant_id, name),
            device=project.config.device,
            fetched=project.fetch_dir(variant_id),
        )
        done[name] = manifest.digest()
        if on_done is not None:
            on_done(name)
    return {"variant": variant_id, "candidates": done}


@_locked
def evaluate(project: Project, variant_id: str) -> GateReport:
    from slmops.evaluate import evaluate as run_evaluate

    variant, sel = project.selected(variant_id)
    for recipe in sel.recipes:
        _require(project.candidate_dir(variant_id, recipe), f"slmops quantize {variant_id}")
    return run_evaluate(
        task=variant.task,
        candidates={r: project.candidate_dir(variant_id, r) for r in sel.recipes},
        reference=project.config.reference_recipe,
        gates=project.gates,
        out=project.gate_file(variant_id),
        threads=project.settings.threads,
    )


@_locked
def benchmark(
    project: Project, variant_id: str, *, on_done: Callable[[str], None] | None = None
) -> dict[str, BenchReport]:
    """Benchmark every candidate of the variant, one fresh subprocess each; ``on_done(recipe)`` after each."""
    from slmops.benchmark import run_benchmark

    _, sel = project.selected(variant_id)
    for recipe in sel.recipes:
        _require(project.candidate_dir(variant_id, recipe), f"slmops quantize {variant_id}")
    results = {}
    for name in sel.recipes:
        results[name] = run_benchmark(
            project.candidate_dir(variant_id, name),
            config=project.config.benchmark,
            profiles=project.device_profiles,
            out=project.bench_file(variant_id, name),
        )
        if on_done is not None:
            on_done(name)
    return results


@_locked
def register(project: Project, variant_id: str, *, benchmarked: bool = True) -> RegistryRecord:
    """Log every candidate of the variant to MLflow; raises MissingResultError naming the stage to run first.

    ``benchmarked=False`` (a distributed build worker) registers right after the gate, with no numbers of this
    machine: the devices' benchmark workers measure each registered version and log theirs to its run.
    """
    from slmops.register import register as run_register
    from slmops.register.metrics import candidate_metrics, metrics_dir, write_metrics

    variant, sel = project.selected(variant_id)
    gate = read_result(project.gate_file(variant_id), GateReport, variant=variant_id)
    out = {}
    compact = {}
    for name in sel.recipes:
        evaluation = gate.candidate(name, variant=variant_id)
        bench = (
            read_result(project.bench_file(variant_id, name), BenchReport, variant=variant_id) if benchmarked else None
        )
        compact[name] = candidate_metrics(variant.task, evaluation, bench)
        registered = run_register(
            variant=variant,
            recipe=project.recipes[name],
            folder=project.candidate_dir(variant_id, name),
            evaluation=evaluation,
            benchmark=bench,
            device=project.config.device,
            settings=project.settings,
        )
        out[name] = RegisteredCandidate(
            run_id=registered.run_id,
            model=registered.model_name,
            version=registered.version,
            reused=registered.reused,
            gate="passed" if evaluation.passed else "failed",
        )
    record = RegistryRecord(variant=variant_id, candidates=out)
    write_metrics(metrics_dir(project.root, variant_id), compact)  # what `dvc metrics show` lists
    write_result(project.registry_file(variant_id), record)
    return record


@_locked
def device_benchmark(project: Project, model: str, version: str, profile: str) -> BenchReport:
    """Benchmark a registered version on one device profile (a benchmark worker); see slmops.benchmark.device."""
    from slmops.benchmark.device import bench_version

    return bench_version(
        model,
        version,
        profile,
        config=project.config.benchmark,
        profiles=project.device_profiles,
        settings=project.settings,
        out=project.root / "device-bench" / model / version / f"{profile}.json",
    )


def device_not_measured(project: Project, model: str, version: str, profile: str, why: str) -> None:
    """Record on the version's run that device ``profile`` could not measure it, and why."""
    from slmops.benchmark.device import mark_not_measured

    mark_not_measured(model, version, profile, why, settings=project.settings)


@_locked
def recommend(project: Project) -> Recommendations:
    from slmops.recommend import recommend as run_recommend

    decisions = run_recommend(project.usecases, settings=project.settings, plots_dir=project.plots_dir())
    write_result(project.recommendations_file(), decisions)
    return decisions


def _require(folder: Path, command: str) -> None:
    """Raise MissingResultError naming ``command`` when ``folder`` holds no finished stage output."""
    if not (folder / MANIFEST_NAME).is_file():
        raise MissingResultError(f"{folder} has no finished output of the stage before; run `{command}` first")


STAGES = ("fetch", "export", "quantize", "evaluate", "benchmark", "register")
