"""Choosing among registered model versions under constraints, with the reason for every verdict.

The runtime uses it for ``slmops.load(task=..., max_memory_mb=...)``; the recommend stage for the aliases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slmops import names
from slmops.errors import NoEligibleModelError
from slmops.tasks import TaskName, get_task

# objective -> (metric name in MLflow, higher is better)
OBJECTIVES: dict[str, tuple[str, bool]] = {
    "decode_speed": ("bench.decode_tok_s", True),
    "ttft": ("bench.ttft_ms", False),
    "throughput": ("bench.items_per_s", True),
    "memory": ("bench.peak_rss_mb", False),
    "size": ("bench.size_mb", False),
}
Objective = Literal["decode_speed", "ttft", "throughput", "memory", "size"]


class Constraints(BaseModel):
    """What a model must satisfy to be chosen (every field optional but task)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: TaskName
    device: Literal["cpu", "cuda"] = "cpu"
    profile: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]*$",
        description="Device profile (configs/devices.yaml) whose own measurements rank the candidates: the numbers "
        "its benchmark worker logged (bench.<profile>.*, a distributed build). None: the build's benchmark (bench.*).",
    )
    capabilities: list[str] = Field(default_factory=list, description="Catalog capabilities the variant must have.")
    max_memory_mb: float | None = Field(default=None, gt=0, description="Upper bound on measured peak RSS.")
    max_latency_ms: float | None = Field(
        default=None,
        gt=0,
        description="Upper bound on the task's latency metric (TTFT for decoders, batch-1 p95 for encoders).",
    )
    min_quality: float | None = Field(
        default=None,
        description="Lower bound on the task's quality metric; for a ratio to the reference (lower is better, "
        "causal-lm's ppl_ratio) the ratio may be at most 2 - min_quality.",
    )


@dataclass
class Candidate:
    """A registered version with the metrics of its latest run."""

    model_name: str
    version: str
    tags: dict[str, str]
    metrics: dict[str, float]
    rejected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # limits passed only through the incumbent's noise allowance
    measured_on: str | None = None  # the ranked profile's run tag (slmops.bench.<profile>); None: no profile asked
    # when its latest run started (ms since the epoch): a rebuild that reproduces an older version's artifact
    # points that version's latest run at the new build, so it is again the newest build of its kind
    built_at: int = 0

    @property
    def busy(self) -> bool:
        """Measured on a machine the benchmark flagged busy (metric ``machine.busy``)."""
        return self.metrics.get("machine.busy", 0.0) >= 1

    def spread(self, metric: str) -> float:
        """The relative spread of ``metric`` over the benchmark's repeats (0 when not recorded)."""
        return self.metrics.get(names.spread_metric(metric), 0.0)

    @property
    def label(self) -> str:
        return f"{self.tags.get(names.TAG_VARIANT, '?')}:{self.tags.get(names.TAG_RECIPE, '?')}"

    @property
    def uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"


def registered_candidates(client: Any, task: str, *, profile: str | None = None) -> list[Candidate]:
    """Every version of the task's registered model, with metrics read from its latest run.

    With ``profile``, the metrics are those its device's benchmark worker logged to the run, renamed as the
    build's own (``bench.<profile>.decode_tok_s`` -> ``bench.decode_tok_s``, ``bench.<profile>.machine.busy`` ->
    ``machine.busy``), so every rule below reads them alike; the build machine's numbers are left out.
    """
    from mlflow.exceptions import MlflowException

    model_name = get_task(task).model_name
    try:
        versions = client.search_model_versions(f"name='{model_name}'")
    except MlflowException:
        return []
    out = []
    for v in versions:
        run_id = v.tags.get(names.TAG_LATEST_RUN) or v.run_id
        run = client.get_run(run_id) if run_id else None
        data = run.data if run else None
        metrics = dict(data.metrics) if data else {}
        built_at = int(run.info.start_time or 0) if run else 0
        candidate = Candidate(model_name, str(v.version), dict(v.tags), metrics, built_at=built_at)
        if profile is not None:
            candidate.metrics = names.profile_metrics(metrics, profile)
            tags = data.tags if data else {}
            candidate.measured_on = tags.get(names.device_bench_tag(profile), "no benchmark run logged")
        out.append(candidate)
    return out


def _check(c: Candidate, k: Constraints, *, incumbent: bool = False) -> list[str]:
    t, m = c.tags, c.metrics
    reasons = []
    if t.get(names.TAG_GATE) != "passed":
        reasons.append("failed its quality gate")
    if k.profile is not None:
        if c.measured_on != "measured":  # set last by the device's worker: a half-logged run never qualifies
            why = (c.measured_on or "no benchmark run logged").removeprefix("not measured: ")
            reasons.append(f"not measured on {k.profile}: {why}")
    elif t.get(names.TAG_DEVICE) != k.device:
        reasons.append(f"benchmarked on {t.get(names.TAG_DEVICE)}, not {k.device}")
    missing = [cap for cap in k.capabilities if cap not in t.get(names.TAG_CAPABILITIES, "").split(",")]
    if missing:
        reasons.append(f"lacks capabilities {missing}")
    if k.max_memory_mb is not None:
        rss = m.get("bench.peak_rss_mb")
        if rss is None or rss > k.max_memory_mb:
            reasons.append(f"peak RSS {rss:.0f} MB > {k.max_memory_mb:.0f} MB" if rss else "no memory measurement")
    spec = get_task(k.task)
    if k.max_latency_ms is not None:
        key = spec.latency_metric
        lat = m.get(key)
        if lat is None or lat > k.max_latency_ms:
            excuse = _noise_excuse(c, key, k.max_latency_ms, incumbent=incumbent) if lat else None
            if excuse:
                c.notes.append(f"{key} {lat:.0f} ms > {k.max_latency_ms:.0f} ms tolerated{excuse}")
            else:
                reasons.append(f"{key} {lat:.0f} ms > {k.max_latency_ms:.0f} ms" if lat else f"no {key} measurement")
    if k.min_quality is not None:
        quality = m.get(spec.quality_metric)
        if not spec.quality_ok(quality, k.min_quality):
            shown = "not measured" if quality is None else f"{quality:.3f}"
            reasons.append(f"{spec.quality_metric} {shown}, needs {spec.quality_bound(k.min_quality)}")
    return reasons


def _noise_excuse(c: Candidate, key: str, limit: float, *, incumbent: bool) -> str | None:
    """Why a latency over ``limit`` may be noise, or None.

    A busy machine only makes a run slower, so a miss measured there proves nothing, for any candidate (a
    first build on a busy machine still gets its aliases; the next quiet build re-measures them). A miss
    within the spread of the repeats is excused for the incumbent only, so that noise cannot drop it.
    """
    if c.busy:
        return ": measured on a busy machine, which only makes it slower"
    lat, spread = c.metrics[key], c.spread(key)
    if incumbent and lat <= limit * (1 + spread):
        return f" for the incumbent: within its repeat spread {spread:.0%}"
    return None


def rank(
    candidates: list[Candidate], constraints: Constraints, objective: str, *, incumbent: str | None = None
) -> list[Candidate]:
    """All candidates, eligible ones first and best first by ``objective``; ``rejected`` says why for the rest.

    A latency limit missed on a busy machine rejects no candidate, and ``incumbent`` (the version an alias
    points at now) is not rejected for one it misses within its repeat spread (both noted in ``notes``),
    so noise can neither drop a model nor leave a use case without one.
    """
    metric, higher = OBJECTIVES[objective]

    def build(c: Candidate) -> tuple[str | None, ...]:
        return tuple(c.tags.get(tag) for tag in (names.TAG_VARIANT, names.TAG_RECIPE, names.TAG_DEVICE))

    # the newest build of each kind: the version whose latest run is newest (a version re-registered by a later
    # build counts as that build), the higher version number among equals
    newest: dict[tuple[str | None, ...], Candidate] = {}
    for c in candidates:
        other = newest.get(build(c))
        if other is None or (c.built_at, int(c.version)) > (other.built_at, int(other.version)):
            newest[build(c)] = c
    for c in candidates:
        c.notes = []
        c.rejected = _check(c, constraints, incumbent=c.version == incumbent)
        latest = newest[build(c)]
        if latest is not c:  # an older build: its numbers describe artifacts the pipeline replaced
            c.rejected.append(f"superseded by v{latest.version} (a newer build of the same variant, recipe and device)")
        if metric not in c.metrics and not c.rejected:
            c.rejected.append(f"no {metric} measurement")

    def key(c: Candidate) -> tuple[bool, float]:
        value = c.metrics.get(metric, 0.0)
        return (bool(c.rejected), -value if higher else value)

    return sorted(candidates, key=key)


def best(candidates: list[Candidate], constraints: Constraints, objective: str, *, what: str) -> Candidate:
    """The top eligible candidate; raises NoEligibleModelError listing why each was rejected."""
    ranked = rank(candidates, constraints, objective)
    if not ranked or ranked[0].rejected:
        raise NoEligibleModelError(no_fit_message(ranked, constraints, what=what))
    return ranked[0]


def no_fit_message(ranked: list[Candidate], constraints: Constraints, *, what: str) -> str:
    """Why no candidate of ``rank``'s output fits ``what``: each one's reasons, and what to do."""
    detail = "; ".join(f"{c.label} v{c.version}: {', '.join(c.rejected)}" for c in ranked) or "nothing is registered"
    return (
        f"no registered {constraints.task} model fits {what} ({detail}). "
        "Relax the constraints or run the pipeline (`make run`) for more variants."
    )
