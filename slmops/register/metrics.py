"""The compact metrics DVC shows: one small JSON per candidate, written by the register stage.

``dvc metrics show`` prints one row per file, so a file per candidate
(``artifacts/metrics/<variant>/<recipe>.json``) gives one row per candidate with a handful of
columns: the task's speed, latency and quality metric, peak RSS, size and the gate verdict.
The gate's full report (thresholds, digests, every metric) stays in ``artifacts/gates/``.
"""

from __future__ import annotations

from pathlib import Path

from slmops.artifacts import atomic_folder, write_json_atomic
from slmops.results import BenchReport, CandidateGate
from slmops.tasks import get_task

Value = float | str | None


def metrics_dir(artifacts: Path, variant_id: str) -> Path:
    """The folder of ``variant_id``'s per-candidate metrics files under the artifacts root."""
    return Path(artifacts) / "metrics" / variant_id


def candidate_metrics(task: str, evaluation: CandidateGate, bench: BenchReport | None) -> dict[str, Value]:
    """The headline numbers of one candidate, named as in MLflow without the ``bench.``/``quality.`` prefix.

    Causal-lm: decode_tok_s, ttft_ms, ppl_ratio; encoders: items_per_s, latency_p95_ms and their
    quality metric (cosine_mean, spearman, top1_agreement); all: peak_rss_mb, size_mb and gate.
    """
    spec = get_task(task)
    quality = spec.quality_metric.removeprefix("quality.")
    gate = "passed" if evaluation.passed else "failed"
    if bench is None:  # not measured on this machine (a distributed build worker)
        return {quality: evaluation.metrics.get(quality), "gate": gate}
    speed = spec.speed_metric.removeprefix("bench.")
    latency = spec.latency_metric.removeprefix("bench.")
    if latency == "latency_p95_ms":  # the encoders' batch-1 latency is reported as percentiles
        latency_value = bench.latency_ms_batch1.p95 if bench.latency_ms_batch1 else None
    else:
        latency_value = getattr(bench, latency)
    return {
        speed: getattr(bench, speed),
        latency: latency_value,
        "peak_rss_mb": bench.peak_rss_mb,
        "size_mb": bench.size_mb,
        quality: evaluation.metrics.get(quality),
        "gate": gate,
    }


def write_metrics(folder: Path, rows: dict[str, dict[str, Value]]) -> None:
    """Replace ``folder`` with one ``<candidate>.json`` per row, atomically (a dropped recipe leaves no file).

    A value not measured is left out (``dvc metrics show`` prints ``-``).
    """
    with atomic_folder(folder) as tmp:
        for candidate, row in rows.items():
            write_json_atomic(tmp / f"{candidate}.json", {k: v for k, v in row.items() if v is not None})
