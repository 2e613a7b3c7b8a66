"""The task table: one row per task, read by every stage. Nothing else branches on a task name.

A row says, for one task, which runtime class serves it and which graph kinds it opens, which
optimum task exports it, which metrics and gate judge it, how candidates are ranked and plotted,
which pyfunc signature it is registered with and how it is benchmarked. Code is named by import
path (``module:attribute``) and imported on first use, as Olive's pass table does, so reading the
table costs nothing: the runtime reads it without loading a stage, and a stage loads only its part.

Adding a task means a row here, its runtime class under :mod:`slmops.runtime` and its module
under :mod:`slmops.taskdefs` (quality outputs and metrics, gate, export check, pyfunc I/O and
benchmark routine; see :mod:`slmops.taskdefs.base` for what it holds).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any, Literal

from slmops.errors import UnknownTaskError
from slmops.names import registered_model_name

TaskName = Literal["causal-lm", "sentence-embedding", "cross-encoder", "fill-mask"]
GraphKind = Literal["optimum-decoder", "genai-decoder", "optimum-encoder"]


@dataclass(frozen=True)
class TaskSpec:
    """Everything the stages need to know about one task."""

    name: str
    description: str
    runtime: str
    """The runtime class (``module:Class``) that serves this task's artifact folders."""
    graphs: tuple[GraphKind, ...]
    """Model-card graph kinds this task's runtime opens."""
    optimum_task: str
    """optimum's exporter task for this task."""
    optimum_graph: GraphKind
    """The graph kind an optimum export of this task produces."""
    module: str
    """The task's module under :mod:`slmops.taskdefs`: metrics, gate, export check, pyfunc I/O, benchmark."""
    speed_metric: str
    """The MLflow metric of speed: the x axis of the Pareto plot and the objective when loading by constraints."""
    quality_metric: str
    """The MLflow metric of quality against the reference export: the Pareto y axis and ``min_quality``'s subject."""
    quality_higher: bool
    """Whether a higher ``quality_metric`` is better. When lower is better (a ratio to the reference, 1 = equal),
    ``min_quality=q`` admits values up to ``2 - q``."""
    latency_metric: str
    """The MLflow metric ``max_latency_ms`` bounds."""
    objective: str
    """The objective (``configs/usecases.yaml``) when a model is chosen by constraints alone."""
    generative: bool
    """Decoders (token by token, KV cache) as opposed to encoders (one pass per batch)."""
    tolerance: tuple[float, float] = (1e-4, 0.0)
    """Default (atol, rtol) of the export check against PyTorch; ``pipeline.yaml`` may override it."""

    @property
    def model_name(self) -> str:
        """The registered model of this task; use-case aliases pick a version within it."""
        return registered_model_name(self.name)

    def runtime_class(self) -> type:
        return _resolve(self.runtime)

    def impl(self) -> ModuleType:
        """The task's module (imported on first use)."""
        return importlib.import_module(self.module)

    def quality_ok(self, value: float | None, min_quality: float) -> bool:
        """Whether ``value`` of :attr:`quality_metric` meets ``min_quality``."""
        if value is None:
            return False
        return value >= min_quality if self.quality_higher else value <= 2 - min_quality

    def quality_bound(self, min_quality: float) -> str:
        """The bound ``min_quality`` puts on the quality metric, for messages."""
        return f">= {min_quality:.3f}" if self.quality_higher else f"<= {2 - min_quality:.3f}"


def _encoder(name: str, description: str, *, runtime: str, optimum_task: str, module: str, quality: str) -> TaskSpec:
    return TaskSpec(
        name=name,
        description=description,
        runtime=runtime,
        graphs=("optimum-encoder",),
        optimum_task=optimum_task,
        optimum_graph="optimum-encoder",
        module=module,
        speed_metric="bench.items_per_s",
        quality_metric=quality,
        quality_higher=True,
        latency_metric="bench.latency_p95_ms",
        objective="throughput",
        generative=False,
    )


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="causal-lm",
            description="text generation and chat (decoder with KV cache)",
            runtime="slmops.runtime.decoder:TextModel",
            graphs=("optimum-decoder", "genai-decoder"),
            optimum_task="text-generation-with-past",
            optimum_graph="optimum-decoder",
            module="slmops.taskdefs.causal_lm",
            speed_metric="bench.decode_tok_s",
            quality_metric="quality.ppl_ratio",
            quality_higher=False,
            latency_metric="bench.ttft_ms",
            objective="decode_speed",
            generative=True,
            tolerance=(1e-4, 1e-3),  # logits reach |30|: fp32 rounding scales with them
        ),
        _encoder(
            "sentence-embedding",
            "sentence embeddings (sentence-transformers pooling)",
            runtime="slmops.runtime.encoder:EmbeddingModel",
            optimum_task="feature-extraction",
            module="slmops.taskdefs.sentence_embedding",
            quality="quality.cosine_mean",
        ),
        _encoder(
            "cross-encoder",
            "reranking (query, document) pairs",
            runtime="slmops.runtime.encoder:RerankModel",
            optimum_task="text-classification",
            module="slmops.taskdefs.cross_encoder",
            quality="quality.spearman",
        ),
        _encoder(
            "fill-mask",
            "masked-token prediction",
            runtime="slmops.runtime.fillmask:FillMaskModel",
            optimum_task="fill-mask",
            module="slmops.taskdefs.fill_mask",
            quality="quality.top1_agreement",
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    """The row of ``name``; raises UnknownTaskError listing the known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; slmops knows {', '.join(TASKS)}") from None


@cache
def _resolve(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
