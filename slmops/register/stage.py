"""The register stage: one MLflow run per candidate, a registry version for each that passed its gate."""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from slmops import names
from slmops.artifacts import GATE_NAME, Manifest, link_or_copy, read_manifest, write_json_atomic, write_manifest
from slmops.catalog.estimate import estimate_memory
from slmops.catalog.schema import Variant
from slmops.errors import RegistryError
from slmops.quantize.footprint import matmul_weight_bytes
from slmops.quantize.recipes import Recipe
from slmops.register.store import build_tags, ensure_experiment, run_url
from slmops.results import BenchReport, CandidateGate
from slmops.runtime.card import ModelCard, read_model_card
from slmops.runtime.registry import connect
from slmops.settings import Settings, get_settings
from slmops.tasks import get_task

logger = logging.getLogger(__name__)
RUNTIME_REQUIREMENTS = ("onnxruntime", "tokenizers", "numpy", "jinja2", "pydantic", "pyyaml")


@dataclass(frozen=True)
class Registered:
    """Outcome for one candidate: its run, and its model version if it passed the gate."""

    run_id: str
    model_name: str | None
    version: str | None
    reused: bool


def _flat_metrics(evaluation: CandidateGate, report: BenchReport | None, estimate_mb: float) -> dict[str, float]:
    """The run's metrics: quality, gate, the benchmark's numbers (the build's ``bench.*`` and, for its headline
    profile, ``bench.<profile>.*`` as a device's worker logs them) and the memory estimate against them."""
    metrics = {f"quality.{k}": float(v) for k, v in evaluation.metrics.items() if f"quality.{k}" in names.METRICS}
    metrics["gate.passed"] = 1.0 if evaluation.passed else 0.0
    metrics["estimate.memory_mb"] = estimate_mb
    if report is None:  # a distributed build: each device's worker logs its own numbers later
        return metrics
    metrics.update(report.metrics())
    if report.headline_profile is not None:
        profile = report.headline_profile
        metrics.update(report.metrics(prefix=f"bench.{profile}.", machine_prefix=f"bench.{profile}.machine."))
    if report.peak_rss_mb:
        metrics["estimate.error"] = (estimate_mb - report.peak_rss_mb) / report.peak_rss_mb
    return metrics


def register(
    *,
    variant: Variant,
    recipe: Recipe,
    folder: Path,
    evaluation: CandidateGate,
    benchmark: BenchReport | None,
    device: str = "cpu",
    settings: Settings | None = None,
) -> Registered:
    """Log the candidate in ``folder`` to MLflow; register it as a model version if it passed its gate.

    ``benchmark`` None (a distributed build) logs no numbers: each device's benchmark worker logs its own
    to the run later (slmops.benchmark.device). A version whose candidate digest and device are already
    registered is reused (its ``slmops.latest_run`` tag moves to the new run), so re-running the pipeline never
    duplicates versions.
    Raises IntegrityError if the folder is not a finished candidate, RegistryError if MLflow refuses.
    """
    import mlflow
    import mlflow.pyfunc

    settings = settings or get_settings()
    manifest = read_manifest(folder, verify=True)
    digest = manifest.digest()
    if evaluation.candidate_digest != digest or (benchmark is not None and benchmark.candidate_digest != digest):
        raise RegistryError(
            f"gate/benchmark results for {variant.id}/{recipe.name} were computed on another build of the candidate; "
            "re-run evaluate and benchmark"
        )
    client = connect(settings)
    experiment_id = ensure_experiment(client, settings)
    model_name = get_task(variant.task).model_name
    tags = {
        names.TAG_VARIANT: variant.id,
        names.TAG_RECIPE: recipe.name,
        names.TAG_PRECISION: recipe.precision,
        names.TAG_DEVICE: device,
        names.TAG_REVISION: manifest.revision or "unpinned",
        names.TAG_SOURCE: manifest.source,
        names.TAG_TASK: variant.task,
        names.TAG_GATE: "passed" if evaluation.passed else "failed",
        names.TAG_DIGEST: digest,
        names.TAG_CAPABILITIES: ",".join(variant.capabilities),
    }
    card = read_model_card(folder)
    graph = card.graph.split("-")[0]  # "genai-decoder" -> "genai"
    estimate_mb = _estimate_for(
        variant,
        recipe,
        benchmark,
        graph if graph in ("optimum", "genai") else "optimum",
        matmul_weight_bytes(folder / card.onnx_file),
    )
    existing = _find_version(client, model_name, digest, device)
    try:
        run_name = f"{recipe.name} · {variant.id} · {device}"  # the recipe first: what a cut-off column still shows
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            build = build_tags(settings)
            mlflow.set_tags({**tags, **build, names.TAG_NOTE: _note(variant, recipe, evaluation)})
            mlflow.log_params(_params(variant, recipe, manifest, device, benchmark))
            if benchmark is not None and benchmark.machine is not None and benchmark.machine.busy:
                mlflow.set_tag(names.TAG_BUSY, "; ".join(benchmark.machine.busy_reasons))
            mlflow.log_metrics(_flat_metrics(evaluation, benchmark, estimate_mb))
            mlflow.log_dict(evaluation.model_dump(mode="json"), names.GATE_ARTIFACT)
            if benchmark is not None:
                mlflow.log_dict(benchmark.model_dump(mode="json"), names.BENCH_ARTIFACT)
                if benchmark.headline_profile is not None:  # as a device's worker tags what it measured
                    mlflow.set_tag(names.device_bench_tag(benchmark.headline_profile), "measured")
            mlflow.log_dict(manifest.to_dict(), names.MANIFEST_ARTIFACT)
            if not evaluation.passed:
                logger.info("%s/%s failed its gate: logged, not registered", variant.id, recipe.name)
                return Registered(run.info.run_id, None, None, reused=False)
            note = _version_note(
                _note(variant, recipe, evaluation),
                card,
                experiment_id,
                run.info.run_id,
                f"{run_name}, build {build[names.TAG_BUILD_ID]}",
            )
            if existing is not None:
                client.set_model_version_tag(model_name, existing, names.TAG_LATEST_RUN, run.info.run_id)
                client.update_model_version(model_name, existing, description=note)
                mlflow.set_tag(names.TAG_VERSION, existing)
                return Registered(run.info.run_id, model_name, existing, reused=True)
            with warnings.catch_warnings():
                # we pass an explicit signature; an input example would make MLflow run the model at log time
                warnings.filterwarnings("ignore", message=".*input example was not provided.*")
                info = _log_model(model_name, variant, folder, tags, candidate=manifest, evaluation=evaluation)
            version = str(info.registered_model_version)
            client.update_registered_model(model_name, description=_model_description(variant.task))
            client.update_model_version(model_name, version, description=note)

            for key, value in {**tags, names.TAG_LATEST_RUN: run.info.run_id}.items():
                client.set_model_version_tag(model_name, version, key, value)
            mlflow.set_tag(names.TAG_VERSION, version)
    except RegistryError:
        raise
    except Exception as exc:  # mlflow raises MlflowException and OSError alike
        raise RegistryError(
            f"registering {variant.id}/{recipe.name} in {settings.resolved_tracking_uri()} failed: {exc}"
        ) from exc
    logger.info("registered %s/%s as %s version %s", variant.id, recipe.name, model_name, version)
    return Registered(run.info.run_id, model_name, version, reused=False)


def _params(
    variant: Variant, recipe: Recipe, manifest: Manifest, device: str, bench: BenchReport | None
) -> dict[str, Any]:
    """The run's params: what the candidate is and how it was measured (nothing unknown is logged as "None")."""
    params = {
        "variant": variant.id,
        "family": variant.family,
        "repo_id": variant.repo_id,
        "revision": manifest.revision or "unpinned",
        "source": manifest.source,
        "task": variant.task,
        "params": variant.params,
        "recipe": recipe.name,
        "method": recipe.method,
        "precision": recipe.precision,
        "bits": recipe.weight_bits,
        "granularity": recipe.granularity,
        "device": device,
        "bench_profile": bench.headline_profile if bench else None,
        "threads": (bench.context or {}).get("threads") if bench else None,
    }
    return {key: value for key, value in params.items() if value is not None}


def _version_note(note: str, card: ModelCard, experiment_id: str, run_id: str, run_name: str) -> str:
    """A version's description: its gate note, the model card's facts, and a link to the run its numbers come from
    (the one `slmops recommend` ranks by; the version's Source Run stays the build that first registered it)."""
    return (
        f"{note}\n\nModel card: {card.task}, {card.graph} graph, {card.precision}, context {card.context_length} "
        f"tokens.\n\nNumbers: run [{run_name}]({run_url(experiment_id, run_id)}) (tag `{names.TAG_LATEST_RUN}`), "
        "the latest build of this candidate and the one `slmops recommend` ranks by; the Source Run is the build "
        "that first registered it."
    )


def _estimate_for(
    variant: Variant, recipe: Recipe, bench: BenchReport | None, graph: str, weight_bytes: float | None
) -> float:
    """The catalog's memory estimate (MiB) for the settings the benchmark measured, to compare with its peak RSS;
    ``weight_bytes``: the candidate's own bytes per MatMulNBits weight, where it has them."""
    shape: dict[str, Any] = {"context_length": min(2048, variant.context_length)}  # nothing measured: defaults
    if bench is not None and get_task(variant.task).generative and bench.max_context:
        shape = {
            "context_length": min(bench.max_context, variant.context_length),
            "prompt_tokens": bench.max_prompt_tokens or 0,
            "graph": graph,
        }
    elif bench is not None and bench.max_seq_tokens:
        shape = {"context_length": bench.max_seq_tokens, "batch": bench.batch_size or 1}
    est = estimate_memory(variant, precision=recipe.precision, weight_bytes=weight_bytes, **shape)
    return est.total / 2**20


def _log_model(
    model_name: str,
    variant: Variant,
    folder: Path,
    tags: dict[str, str],
    *,
    candidate: Manifest,
    evaluation: CandidateGate,
) -> Any:
    """Log the candidate folder, with its gate result and a manifest covering both, as a pyfunc model
    (models-from-code, no pickle) and register it. The candidate folder itself is left untouched."""
    import mlflow.pyfunc

    from slmops.quiet import mlflow_progress_bars_off, mlflow_registration_quiet

    with tempfile.TemporaryDirectory(prefix="slmops-register-") as staging:
        bundle = Path(staging) / "model"
        for rel in candidate.files:
            link_or_copy(Path(folder) / rel, bundle / rel)
        write_json_atomic(bundle / GATE_NAME, evaluation.model_dump(mode="json"))
        write_manifest(
            bundle,
            stage="register",
            variant=candidate.variant,
            source=candidate.source,
            revision=candidate.revision,
            info={**candidate.info, "candidate_digest": candidate.digest(), "gate_passed": evaluation.passed},
        )
        # slmops reports each registered version itself (the stage's summary line and log)
        with mlflow_progress_bars_off(), mlflow_registration_quiet():
            return mlflow.pyfunc.log_model(
                name=names.MODEL_ARTIFACT_PATH,
                python_model=str(Path(__file__).with_name("model_code.py")),
                artifacts={names.ARTIFACT_KEY: str(bundle)},
                signature=get_task(variant.task).impl().signature(),
                pip_requirements=[f"{p}=={metadata.version(p)}" for p in RUNTIME_REQUIREMENTS],
                registered_model_name=model_name,
                tags=tags,
            )


def _find_version(client: Any, model_name: str, digest: str, device: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{model_name}'")
    except MlflowException:
        return None
    for v in versions:
        if v.tags.get(names.TAG_DIGEST) == digest and v.tags.get(names.TAG_DEVICE) == device:
            return str(v.version)
    return None


def _model_description(task: str) -> str:
    spec = get_task(task)
    return (
        f"slmops {spec.name} models: {spec.description}. Every version is a candidate that passed its quality gate "
        f"(configs/gates.yaml), benchmarked per device; aliases are use cases (configs/usecases.yaml) set by "
        f"`slmops recommend` on {spec.speed_metric} among versions meeting their constraints."
    )


def _note(variant: Variant, recipe: Recipe, evaluation: CandidateGate) -> str:
    verdict = "passed" if evaluation.passed else "FAILED: " + "; ".join(evaluation.reasons)
    return f"Recipe `{recipe.name}` on {variant.id} ({variant.repo_id}): {recipe.description} Gate {verdict}."
