"""Choosing among registered model versions under constraints, with the reason for every verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slmops.errors import NoEligibleModelError
from slmops.recommend.usecases import OBJECTIVES, Constraints
from slmops.register import names


@dataclass
class Candidate:
    """A registered version with the metrics of its latest run."""

    model_name: str
    version: str
    tags: dict[str, str]
    metrics: dict[str, float]
    rejected: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.tags.get(names.TAG_VARIANT, '?')}:{self.tags.get(names.TAG_RECIPE, '?')}"

    @property
    def uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"


def registered_candidates(client: Any, task: str) -> list[Candidate]:
    """Every version of the task's registered model, with metrics read from its latest run."""
    from mlflow.exceptions import MlflowException

    model_name = names.registered_model_name(task)
    try:
        versions = client.search_model_versions(f"name='{model_name}'")
    except MlflowException:
        return []
    out = []
    for v in versions:
        run_id = v.tags.get("slmops.latest_run") or v.run_id
        metrics = client.get_run(run_id).data.metrics if run_id else {}
        out.append(Candidate(model_name, str(v.version), dict(v.tags), dict(metrics)))
    return out


def _check(c: Candidate, k: Constraints) -> list[str]:
    t, m = c.tags, c.metrics
    reasons = []
    if t.get(names.TAG_GATE) != "passed":
        reasons.append("failed its quality gate")
    if t.get(names.TAG_DEVICE) != k.device:
        reasons.append(f"benchmarked on {t.get(names.TAG_DEVICE)}, not {k.device}")
    missing = [cap for cap in k.capabilities if cap not in t.get(names.TAG_CAPABILITIES, "").split(",")]
    if missing:
        reasons.append(f"lacks capabilities {missing}")
    if k.max_memory_mb is not None:
        rss = m.get("bench.peak_rss_mb")
        if rss is None or rss > k.max_memory_mb:
            reasons.append(f"peak RSS {rss:.0f} MB > {k.max_memory_mb:.0f} MB" if rss else "no memory measurement")
    if k.max_latency_ms is not None:
        key = "bench.ttft_ms" if k.task == "causal-lm" else "bench.latency_p95_ms"
        lat = m.get(key)
        if lat is None or lat > k.max_latency_ms:
            reasons.append(f"{key} {lat:.0f} ms > {k.max_latency_ms:.0f} ms" if lat else f"no {key} measurement")
    if k.min_quality is not None:
        if k.task == "causal-lm":
            ratio = m.get("quality.ppl_ratio", float("inf"))
            if ratio > 2 - k.min_quality:
                reasons.append(f"ppl_ratio {ratio:.3f} > {2 - k.min_quality:.3f}")
        else:
            quality = m.get("quality.cosine_mean", m.get("quality.spearman", m.get("quality.top1_agreement", float("-inf"))))
            if quality < k.min_quality:
                reasons.append(f"quality {quality:.3f} < {k.min_quality}")
    return reasons


def rank(candidates: list[Candidate], constraints: Constraints, objective: str) -> list[Candidate]:
    """All candidates, eligible ones first and best first by ``objective``; ``rejected`` says why for the rest."""
    metric, higher = OBJECTIVES[objective]
    def build(c: Candidate) -> tuple[str | None, ...]:
        return tuple(c.tags.get(tag) for tag in (names.TAG_VARIANT, names.TAG_RECIPE, names.TAG_DEVICE))

    newest: dict[tuple[str | None, ...], int] = {}
    for c in candidates:
        newest[build(c)] = max(newest.get(build(c), 0), int(c.version))
    for c in candidates:
        c.rejected = _check(c, constraints)
        latest = newest[build(c)]
        if int(c.version) < latest:  # an older build: its numbers describe artifacts the pipeline replaced
            c.rejected.append(f"superseded by v{latest} (a newer build of the same variant, recipe and device)")
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
        detail = "; ".join(f"{c.label} v{c.version}: {', '.join(c.rejected)}" for c in ranked) or "nothing is registered"
        raise NoEligibleModelError(
            f"no registered {constraints.task} model fits {what} ({detail}). "
            "Relax the constraints or run the pipeline (`make run`) for more variants."
        )
    return ranked[0]
