"""sentence-embedding: cosine and retrieval gate against the reference, pooled export check, embed benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from slmops.taskdefs.base import TEXTS, FixedInputs, GateModel, bench_items, encode_fixed, eval_sentences, load_torch

if TYPE_CHECKING:
    from slmops.catalog.schema import Variant
    from slmops.runtime.encoder import EmbeddingModel

TASK = "sentence-embedding"
TEXT_COLUMN = "text"


class Gate(GateModel):
    min_cosine_mean: float = Field(ge=-1.0, le=1.0)
    min_cosine_min: float = Field(ge=-1.0, le=1.0)
    min_topk_agreement: float = Field(ge=0.0, le=1.0)
    top_k: int = Field(default=3, ge=1, description="Retrieval depth of topk_agreement.")


def outputs(model: EmbeddingModel) -> dict[str, np.ndarray]:
    data = eval_sentences()
    return {"queries": model.embed(data["queries"]), "documents": model.embed(data["documents"])}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def metrics(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray], gate: Gate) -> dict[str, float]:
    """Cosine to the reference embeddings (mean/min) and top-k retrieval agreement."""
    top_k = gate.top_k
    cand = np.concatenate([candidate["queries"], candidate["documents"]])
    ref = np.concatenate([reference["queries"], reference["documents"]])
    cos = (_unit(cand) * _unit(ref)).sum(axis=1)

    def topk(out: dict[str, np.ndarray]) -> np.ndarray:
        sims = _unit(out["queries"]) @ _unit(out["documents"]).T
        return np.argsort(-sims, axis=1, kind="stable")[:, :top_k]

    pairs = zip(topk(candidate), topk(reference), strict=True)
    agree = np.mean([len(set(a) & set(b)) / top_k for a, b in pairs])
    relevant = np.asarray(eval_sentences()["relevant"])
    hits = float(np.mean(topk(candidate)[:, 0] == relevant))
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "topk_agreement": float(agree),
        "top1_hit_rate": hits,
    }


def card_fields(src: Path, config: dict[str, Any]) -> dict[str, Any]:
    from slmops.runtime.card import read_pooling

    return {"pooling": read_pooling(src)}


def export_inputs(src: Path) -> FixedInputs:
    return encode_fixed(src, list(TEXTS))


def torch_reference(variant: Variant, src: Path, inputs: FixedInputs) -> dict[str, Any]:
    """Token embeddings, and the pooled sentence embedding for graphs exported with sentence-transformers."""
    import torch

    from slmops.runtime.card import read_pooling
    from slmops.runtime.encoder import pool

    model = load_torch("AutoModel", src, remote_code=variant.remote_code)
    feed = {n: torch.from_numpy(inputs.arrays[n]) for n in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.inference_mode():
        hidden = model(**feed).last_hidden_state.float().numpy()
    pooling = read_pooling(src)
    pooled = pool(
        hidden,
        inputs.arrays["attention_mask"],
        mode=pooling.mode if pooling else "mean",
        normalize=pooling is not None and pooling.normalize,
    )
    return {"last_hidden_state": hidden, "token_embeddings": hidden, "sentence_embedding": pooled}


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    # no input schema, as causal_lm.signature explains: predict reads a str, a list, a DataFrame or a dict of lists
    return ModelSignature(inputs=None, outputs=Schema([ColSpec(Array("double"))]))


def predict(model: EmbeddingModel, rows: list[dict[str, Any]], params: dict[str, Any]) -> list[list[float]]:
    from slmops.taskdefs.base import text_column

    return model.embed(text_column(rows, TEXT_COLUMN, task=TASK)).tolist()


def bench(model: EmbeddingModel, spec: dict[str, Any]) -> dict[str, Any]:
    return bench_items(model, spec, lambda batch, batch_size: model.embed(batch, batch_size=batch_size))
