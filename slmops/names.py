"""Stable names for everything slmops writes to MLflow (experiment, models, metrics, tags, artifacts), in one place.

The MLflow UI's compare view lines runs up by these names, so they never change
meaning. Metrics absent for a task are simply not logged.
"""

from __future__ import annotations

EXPERIMENT = "slmops"
REGISTERED_MODEL_PREFIX = "slmops"

# metric name -> (where it comes from, meaning)
METRICS: dict[str, str] = {
    # quality gate (evaluate stage), vs the unquantized export of the same variant
    "quality.ppl": "perplexity on the shipped evaluation text (causal-lm)",
    "quality.ppl_ratio": "ppl / ppl of the fp32 export (causal-lm)",
    "quality.top1_agreement": "argmax agreement with fp32: teacher-forced (causal-lm), at each mask (fill-mask)",
    "quality.top5_overlap": "share of fp32's top-5 tokens at each mask kept (fill-mask)",
    "quality.cosine_mean": "mean cosine to fp32 embeddings (sentence-embedding)",
    "quality.cosine_min": "min cosine to fp32 embeddings (sentence-embedding)",
    "quality.topk_agreement": "top-k retrieval overlap with fp32 (sentence-embedding)",
    "quality.spearman": "rank correlation of scores with fp32 (cross-encoder)",
    "gate.passed": "1 if the candidate passed its quality gate, else 0",
    # benchmark stage, fresh subprocess on the named device
    "bench.load_s": "seconds to open the ONNX session",
    "bench.ttft_ms": "time to first token, median (causal-lm)",
    "bench.decode_tok_s": "decode tokens per second after the first, median (causal-lm)",
    "bench.token_latency_p50_ms": "per-token latency p50 (causal-lm)",
    "bench.token_latency_p95_ms": "per-token latency p95 (causal-lm)",
    "bench.items_per_s": "items per second at the configured batch size (encoders)",
    "bench.latency_p50_ms": "batch-1 latency p50 (encoders)",
    "bench.latency_p95_ms": "batch-1 latency p95 (encoders)",
    "bench.peak_rss_mb": "peak resident memory of the benchmark process (VmHWM)",
    "bench.peak_rss_sampled_mb": "peak of RSS sampled every sample_interval_ms (optimum-benchmark's method)",
    "bench.<profile>.ttft_ms.p<N>": "TTFT for an N-token prompt on a device profile (causal-lm)",
    "bench.<profile>.decode_tok_s.p<N>": "decode tokens/s after an N-token prompt on a device profile (causal-lm)",
    "bench.<profile>.items_per_s.b<B>": "items/s at batch size B on a device profile (encoders)",
    "bench.rss_after_load_mb": "resident memory after loading",
    "bench.size_mb": "artifact folder size on disk",
    "bench.<metric>.spread": "(max - min) / median of the timed repeats of bench.<metric> (decode_tok_s, ttft_ms, "
    "items_per_s, latency_p95_ms): the noise an alias move must beat",
    # the machine while the headline profile ran (slmops.benchmark.machine)
    "machine.load_before": "1-minute load average just before the benchmark worker started",
    "machine.load_after": "1-minute load average just after it ended",
    "machine.steal_pct": "% of the machine's CPU time stolen by the hypervisor during the run (Linux /proc/stat)",
    "machine.other_cpu_pct": "% of the machine's CPU time used by processes other than the benchmark during the run",
    "machine.cpu_count": "CPUs the machine reports",
    "machine.threads": "onnxruntime intra-op threads of the device profile",
    "machine.process_threads": "OS threads of the benchmark worker after loading",
    "machine.busy": "1 if the machine was busy even after the retries (benchmark busy_* settings): moves no alias",
    "machine.attempts": "benchmark runs made (a busy run is measured again)",
    "estimate.memory_mb": "the catalog's memory estimate for this precision",
    "estimate.error": "(estimate - measured peak RSS) / measured peak RSS",
}

ARTIFACT_KEY = "model_dir"  # the pyfunc artifact holding the slmops candidate folder

# version/run tag names
TAG_VARIANT = "slmops.variant"
TAG_RECIPE = "slmops.recipe"
TAG_PRECISION = "slmops.precision"
TAG_DEVICE = "slmops.device"
TAG_REVISION = "slmops.revision"
TAG_SOURCE = "slmops.source"
TAG_TASK = "slmops.task"
TAG_GATE = "slmops.gate"
TAG_DIGEST = "slmops.candidate_digest"
TAG_CAPABILITIES = "slmops.capabilities"
TAG_LATEST_RUN = "slmops.latest_run"  # version tag: the run whose metrics describe the version now
TAG_VERSION = "slmops.version"  # run tag: the model version the run registered or reused
TAG_BUILD_ID = "slmops.build_id"  # run tag: the build (flow run, or one CLI/DVC process) that logged the run
TAG_FLOW_RUN = "slmops.flow_run_id"  # run tag: the Prefect flow run, when the run was logged inside one
TAG_GIT_SHA = "slmops.git_sha"  # run tag: the project's git commit (+ "-dirty" with uncommitted changes)
TAG_KIND = "slmops.kind"  # run tag: what kind of run (candidates carry none; "recommend" passes do)
TAG_BUSY = "slmops.busy"  # run tag: why the machine counted as busy during the benchmark (absent when quiet)
# version tag slmops.alias_moved.<alias> on the version an alias moved to, and the same tag on the recommend run
# (also for a dropped alias): "from v1 (x tok/s) to v3 (y tok/s): +z% > margin m"
TAG_ALIAS_MOVED_PREFIX = "slmops.alias_moved."

# the experiment as the MLflow UI shows it
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # the UI's experiment type (MLflow 3.0-3.16 pick the default tab by it)
EXPERIMENT_KIND = "custom_model_development"  # "Machine learning": the runs view, not GenAI traces
TAG_NOTE = "mlflow.note.content"  # run/experiment description (markdown) in the UI
TAG_SAVED_VIEW_PREFIX = "mlflow.sharedViewState."  # + view id: a saved view of the runs table (MLflow >= 3.17 UI)
COMPARE_VIEW = "slmops-compare"  # id of the saved view ensure_experiment writes
COMPARE_VIEW_NAME = "slmops: compare candidates"
UI_WORKFLOW = "machine_learning"  # the 3.17 UI's ?workflowType=: its global GenAI/Model training switch
# the runs-table columns of that view: the numbers a comparison needs first (the UI's "<type>.`<name>`" keys)
COMPARE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("metrics", "bench.decode_tok_s"),
    ("metrics", "bench.items_per_s"),
    ("metrics", "bench.ttft_ms"),
    ("metrics", "bench.peak_rss_mb"),
    ("metrics", "bench.size_mb"),
    ("metrics", "quality.ppl_ratio"),
    ("metrics", "quality.cosine_mean"),
    ("tags", TAG_GATE),
    ("params", "bits"),
    ("params", "granularity"),
    ("tags", TAG_VERSION),
    ("tags", TAG_BUILD_ID),
    ("attributes", "Models"),
)
COMPARE_SORT = ("metrics", "bench.decode_tok_s")

RUN_KIND_RECOMMEND = "recommend"
RECOMMEND_ARTIFACT = "recommendations.json"
RECOMMEND_INPUTS_ARTIFACT = "recommend_inputs.json"  # use cases, incumbents and the metrics each candidate had
GATE_ARTIFACT = "gate.json"
BENCH_ARTIFACT = "benchmark.json"
MANIFEST_ARTIFACT = "manifest.json"
MODEL_ARTIFACT_PATH = "model"  # the pyfunc model's name inside its run
TAG_DEVICE_BENCH_PREFIX = "slmops.bench."  # + profile, run tag: "measured", or why the device's numbers are missing


def device_bench_tag(profile: str) -> str:
    """The run tag saying whether device ``profile`` measured the run's candidate (distributed builds)."""
    return f"{TAG_DEVICE_BENCH_PREFIX}{profile}"


def device_metric(metric: str, profile: str) -> str:
    """A headline benchmark metric as measured on device ``profile`` by its benchmark worker."""
    return f"bench.{profile}.{metric}"


def profile_metrics(metrics: dict[str, float], profile: str) -> dict[str, float]:
    """A run's metrics as device ``profile`` measured them, under the build's own names: ``bench.<profile>.X`` ->
    ``bench.X`` and ``bench.<profile>.machine.X`` -> ``machine.X``; the build machine's bench.*/machine.* are
    dropped, the rest (quality, gate, estimate) kept."""
    prefix = f"bench.{profile}."
    out = {k: v for k, v in metrics.items() if not k.startswith(("bench.", "machine."))}
    for key, value in metrics.items():
        if key.startswith(prefix):
            rest = key.removeprefix(prefix)
            out[rest if rest.startswith("machine.") else f"bench.{rest}"] = value
    return out


def device_bench_artifact(profile: str) -> str:
    return f"benchmark-{profile}.json"


def registered_model_name(task: str) -> str:
    """One registered model per task; use-case aliases pick a version within it."""
    return f"{REGISTERED_MODEL_PREFIX}-{task}"


def alias_moved_tag(alias: str) -> str:
    """The tag recording why ``alias`` moved (on the new version, and on the recommend run that moved it)."""
    return f"{TAG_ALIAS_MOVED_PREFIX}{alias}"


def alias_run_tag(alias: str) -> str:
    """Version tag: the id of the run whose numbers moved ``alias`` to this version (its deciding benchmark)."""
    return f"slmops.alias_run.{alias}"


def spread_metric(metric: str) -> str:
    """The metric holding the repeat spread of ``metric`` (``bench.decode_tok_s`` -> ``bench.decode_tok_s.spread``)."""
    return f"{metric}.spread"


def usecase_param(usecase: str, key: str) -> str:
    """A recommend run's param: one input of a use case's decision (``chat-cpu.max_latency_ms``, ``.incumbent``)."""
    return f"{usecase}.{key}"


def usecase_metric(usecase: str, key: str) -> str:
    """A recommend run's metric for a use case: ``<use case>.value`` (the chosen objective) or ``.moved`` (0/1)."""
    return f"recommend.{usecase}.{key}"
