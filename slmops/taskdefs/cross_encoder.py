"""cross-encoder: rank-correlation gate against the reference, classification export check, scoring benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from slmops.taskdefs.base import (
    QUERY,
    TEXTS,
    FixedInputs,
    GateModel,
    bench_items,
    encode_fixed,
    eval_sentences,
    torch_logits,
)

if TYPE_CHECKING:
    from slmops.catalog.schema import Variant
    from slmops.runtime.encoder import RerankModel

TASK = "cross-encoder"
TEXT_COLUMN = None  # a (query, document) pair: no single text column


class Gate(GateModel):
    min_spearman: float = Field(ge=-1.0, le=1.0, description="Rank correlation of the scores with the reference's.")


def outputs(model: RerankModel) -> dict[str, np.ndarray]:
    data = eval_sentences()
    return {"scores": np.concatenate([model.scores(q, data["documents"]) for q in data["queries"]])}


def metrics(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray], gate: Gate) -> dict[str, float]:
    """Spearman rank correlation of the candidate's scores with the reference's."""

    def ranks(x: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)

    a, b = ranks(candidate["scores"]), ranks(reference["scores"])
    rho = float(np.corrcoef(a, b)[0, 1]) if a.std() and b.std() else 1.0
    return {"spearman": rho}


def card_fields(src: Path, config: dict[str, Any]) -> dict[str, Any]:
    return {"num_labels": len(config.get("id2label", {})) or None}


def export_inputs(src: Path) -> FixedInputs:
    return encode_fixed(src, [(QUERY, t) for t in TEXTS])


def torch_reference(variant: Variant, src: Path, inputs: FixedInputs) -> dict[str, Any]:
    return torch_logits("AutoModelForSequenceClassification", src, inputs, remote_code=variant.remote_code)


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    # no input schema, as causal_lm.signature explains: a dict of lists would reach predict as one row of lists
    return ModelSignature(inputs=None, outputs=Schema([ColSpec("double")]))


def predict(model: RerankModel, rows: list[dict[str, Any]], params: dict[str, Any]) -> list[float]:
    """The relevance score of each (query, document) row."""
    from slmops.taskdefs.base import text_column

    queries = text_column(rows, "query", task=TASK)
    documents = text_column(rows, "document", task=TASK)
    return [float(model.scores(q, [d])[0]) for q, d in zip(queries, documents, strict=True)]


def bench(model: RerankModel, spec: dict[str, Any]) -> dict[str, Any]:
    query = eval_sentences()["queries"][0]
    return bench_items(model, spec, lambda batch, batch_size: model.scores(query, batch, batch_size=batch_size))
