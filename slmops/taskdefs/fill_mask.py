"""fill-mask: top-k agreement gate at masked words, masked-LM export check, mask-prediction benchmark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from slmops.taskdefs.base import TEXTS, FixedInputs, GateModel, bench_items, encode_fixed, eval_sentences, torch_logits

if TYPE_CHECKING:
    from slmops.catalog.schema import Variant
    from slmops.runtime.fillmask import FillMaskModel

TASK = "fill-mask"
TEXT_COLUMN = "text"


class Gate(GateModel):
    min_top1_agreement: float = Field(
        ge=0.0, le=1.0, description="Same most likely token at each mask as the reference."
    )
    min_top5_overlap: float = Field(ge=0.0, le=1.0, description="Mean share of the reference's top 5 tokens kept.")


def masked_sentences(mask_token: str, *, every: int = 3) -> list[str]:
    """The shipped documents with one word masked at a time: every ``every``-th purely alphabetic word."""
    out = []
    for doc in eval_sentences()["documents"]:
        words = doc.split()
        candidates = [i for i, w in enumerate(words) if w.isalpha()]
        for i in candidates[::every]:
            out.append(" ".join(mask_token if j == i else w for j, w in enumerate(words)))
    return out


def outputs(model: FillMaskModel) -> dict[str, np.ndarray]:
    """The 5 most likely token ids (best first) at the mask of every masked sentence."""
    logits = np.concatenate([lg for _, lg in model.mask_logits(masked_sentences(model.mask_token))])
    return {"top5": np.argsort(-logits, axis=-1, kind="stable")[:, :5]}


def metrics(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray], gate: Gate) -> dict[str, float]:
    """Top-1 agreement and top-5 overlap of the masked-token predictions with the reference's."""
    cand, ref = candidate["top5"], reference["top5"]
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(cand, ref, strict=True)])
    return {
        "top1_agreement": float((cand[:, 0] == ref[:, 0]).mean()),
        "top5_overlap": float(overlap),
        "masks": float(len(ref)),
    }


def card_fields(src: Path, config: dict[str, Any]) -> dict[str, Any]:
    return {}


def export_inputs(src: Path) -> FixedInputs:
    tok_config = src / "tokenizer_config.json"
    mask = json.loads(tok_config.read_text()).get("mask_token") if tok_config.is_file() else None
    mask = mask.get("content") if isinstance(mask, dict) else mask
    words = [t.split() for t in TEXTS]
    texts = [" ".join(w if i != 3 else (mask or w) for i, w in enumerate(ws)) for ws in words]
    return encode_fixed(src, texts)


def torch_reference(variant: Variant, src: Path, inputs: FixedInputs) -> dict[str, Any]:
    return torch_logits("AutoModelForMaskedLM", src, inputs, remote_code=variant.remote_code)


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    # no input schema, as causal_lm.signature explains: predict reads a str, a list, a DataFrame or a dict of lists
    return ModelSignature(
        inputs=None,
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("top_k", "long", 5)]),
    )


def predict(model: FillMaskModel, rows: list[dict[str, Any]], params: dict[str, Any]) -> list[str]:
    """Per row, the JSON of :meth:`FillMaskModel.fill_mask` (per mask: token, score, sequence)."""
    from slmops.taskdefs.base import text_column

    top_k = int(params.get("top_k") or 5)
    return [json.dumps(model.fill_mask(text, top_k=top_k)) for text in text_column(rows, TEXT_COLUMN, task=TASK)]


def bench(model: FillMaskModel, spec: dict[str, Any]) -> dict[str, Any]:
    """Items/s predicting one mask appended to each text."""
    return bench_items(
        model,
        spec,
        lambda batch, batch_size: model.mask_logits([f"{t} {model.mask_token}" for t in batch], batch_size=batch_size),
    )
