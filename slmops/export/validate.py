"""Export validation: every exported graph against PyTorch on fixed inputs, with the diffs recorded.

What each task feeds and compares is data (``CHECKS``, filled by :func:`register_check`): how to
load the source model in PyTorch and which ONNX outputs its reference values stand for. The
ONNX side is generic: every graph input is fed from the fixed inputs by name, and a decoder's
``past_key_values.*`` get an empty cache (past length 0), so optimum's graph, the genai
builder's fused graph and any later exporter's graph are checked the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops.catalog.schema import Variant
from slmops.errors import ExportError
from slmops.export.config import ValidationConfig
from slmops.export.modelcard import ModelCard

logger = logging.getLogger(__name__)

TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at one hundred degrees Celsius at sea level, and freezes at zero.",
)
QUERY = "At what temperature does water boil?"
_ORT_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32", "tensor(float16)": "float16"}


@dataclass(frozen=True)
class FixedInputs:
    """Token arrays (batch, seq) fed to both sides, and a description recorded in the manifest."""

    arrays: dict[str, Any]
    description: str


@dataclass(frozen=True)
class TaskCheck:
    """How to check one task: build fixed inputs from the source folder, and PyTorch's outputs by ONNX name."""

    inputs: Callable[[Path], FixedInputs]
    reference: Callable[[Variant, Path, FixedInputs], dict[str, Any]]


CHECKS: dict[str, TaskCheck] = {}


def register_check(task: str, check: TaskCheck) -> None:
    """Register (or replace) how exports of ``task`` are validated."""
    CHECKS[task] = check


# -- fixed inputs ------------------------------------------------------------------------------------
def _encode(src: Path, batch: list[str] | list[tuple[str, str]]) -> FixedInputs:
    """Token ids of ``batch`` with the folder's tokenizer.json, right-padded; seeded ids if it has none."""
    import numpy as np

    config = json.loads((src / "config.json").read_text())
    if not (src / "tokenizer.json").is_file():  # e.g. OpenELM ships no tokenizer
        ids = np.random.default_rng(0).integers(3, config["vocab_size"], size=(len(batch), 16), dtype=np.int64)
        return FixedInputs(_arrays(ids, np.ones_like(ids)), f"{ids.shape[0]}x{ids.shape[1]} token ids drawn with seed 0")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.enable_padding(pad_id=config.get("pad_token_id") or 0)
    encs = tok.encode_batch(list(batch))
    ids = np.asarray([e.ids for e in encs], dtype=np.int64)
    mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
    types = np.asarray([e.type_ids for e in encs], dtype=np.int64)
    shown = [" | ".join(b) if isinstance(b, tuple) else b for b in batch]
    padded = " (right-padded)" if len(batch) > 1 else ""
    return FixedInputs(_arrays(ids, mask, types), f"{ids.shape[0]}x{ids.shape[1]} tokens{padded} of {shown}")


def _arrays(ids: Any, mask: Any, types: Any = None) -> dict[str, Any]:
    import numpy as np

    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids) if types is None else types}


def _masked_texts(src: Path) -> FixedInputs:
    tok_config = src / "tokenizer_config.json"
    mask = json.loads(tok_config.read_text()).get("mask_token") if tok_config.is_file() else None
    mask = mask.get("content") if isinstance(mask, dict) else mask
    words = [t.split() for t in TEXTS]
    texts = [" ".join(w if i != 3 else (mask or w) for i, w in enumerate(ws)) for ws in words]
    return _encode(src, texts)


# -- PyTorch references ------------------------------------------------------------------------------
def _load(auto_class: str, variant: Variant, src: Path) -> Any:
    import torch
    import transformers

    cls = getattr(transformers, auto_class)
    return cls.from_pretrained(src, dtype=torch.float32, trust_remote_code=variant.remote_code).eval()


def _torch(inputs: FixedInputs, *names: str) -> dict[str, Any]:
    import torch

    return {n: torch.from_numpy(inputs.arrays[n]) for n in names}


def _decoder_reference(variant: Variant, src: Path, inputs: FixedInputs) -> dict[str, Any]:
    import torch

    if variant.exporter == "openelm":  # no transformers class: the openelm-pytorch implementation is the reference
        from slmops.export.openelm import load_openelm, torch_step

        rows = [torch_step(load_openelm(src), ids.tolist(), None)[0] for ids in inputs.arrays["input_ids"]]
        return {"logits": __import__("numpy").stack(rows)}
    model = _load("AutoModelForCausalLM", variant, src)
    with torch.inference_mode():
        out = model(**_torch(inputs, "input_ids", "attention_mask"), use_cache=False)
    return {"logits": out.logits.float().numpy()}


def _logits_reference(auto_class: str) -> Callable[[Variant, Path, FixedInputs], dict[str, Any]]:
    def reference(variant: Variant, src: Path, inputs: FixedInputs) -> dict[str, Any]:
        import torch

        model = _load(auto_class, variant, src)
        with torch.inference_mode():
            out = model(**_torch(inputs, "input_ids", "attention_mask", "token_type_ids"))
        return {"logits": out.logits.float().numpy()}

    return reference


def _embedding_reference(variant: Variant, src: Path, inputs: FixedInputs) -> dict[str, Any]:
    """Token embeddings, and the pooled sentence embedding for graphs exported with sentence-transformers."""
    import torch

    from slmops.export.modelcard import read_pooling
    from slmops.runtime.encoder import pool

    model = _load("AutoModel", variant, src)
    with torch.inference_mode():
        hidden = model(**_torch(inputs, "input_ids", "attention_mask", "token_type_ids")).last_hidden_state.float().numpy()
    pooling = read_pooling(src)
    pooled = pool(hidden, inputs.arrays["attention_mask"], mode=pooling.mode if pooling else "mean",
                  normalize=pooling is not None and pooling.normalize)
    return {"last_hidden_state": hidden, "token_embeddings": hidden, "sentence_embedding": pooled}


register_check("causal-lm", TaskCheck(lambda src: _encode(src, [TEXTS[1]]), _decoder_reference))
register_check("sentence-embedding", TaskCheck(lambda src: _encode(src, list(TEXTS)), _embedding_reference))
register_check("cross-encoder", TaskCheck(lambda src: _encode(src, [(QUERY, t) for t in TEXTS]),
                                          _logits_reference("AutoModelForSequenceClassification")))
register_check("fill-mask", TaskCheck(_masked_texts, _logits_reference("AutoModelForMaskedLM")))


# -- ONNX side and comparison ------------------------------------------------------------------------
def onnx_outputs(path: Path, card: ModelCard, inputs: FixedInputs) -> dict[str, Any]:
    """Run the graph at ``path`` on the fixed inputs; a decoder gets an empty KV cache (past length 0)."""
    import numpy as np

    from slmops.runtime.session import create_session

    session = create_session(path)
    batch, seq = inputs.arrays["input_ids"].shape
    feed = {}
    for node in session.get_inputs():
        dtype = _ORT_DTYPES.get(node.type, "float32")
        if node.name in inputs.arrays:
            feed[node.name] = inputs.arrays[node.name].astype(dtype)
        elif node.name == "position_ids":
            feed[node.name] = np.broadcast_to(np.arange(seq, dtype=dtype), (batch, seq)).copy()
        elif node.name.startswith("past_key_values."):
            heads = node.shape[1] if isinstance(node.shape[1], int) else card.kv_heads
            head_dim = node.shape[3] if isinstance(node.shape[3], int) else card.head_dim
            feed[node.name] = np.zeros((batch, heads, 0, head_dim), dtype=dtype)
        else:
            raise ExportError(
                f"{path} has an input {node.name!r} that the export check cannot feed; "
                f"register a TaskCheck for task {card.task!r} in slmops.export.validate that provides it"
            )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed)))


def validate_export(variant: Variant, *, src: Path, folder: Path, card: ModelCard, config: ValidationConfig) -> dict[str, Any]:
    """Compare the graph in ``folder`` with the PyTorch model in ``src`` on fixed inputs.

    Returns ``{output: {max_abs_diff, atol, rtol, limit, reference_max_abs, inputs}}`` for the
    manifest. Raises ExportError naming the output, its diff and the tolerance when one exceeds it.
    """
    import numpy as np

    try:
        check = CHECKS[card.task]
    except KeyError:
        raise ExportError(f"no export check for task {card.task!r}; register one with register_check()") from None
    tol = config.tolerance(card.task)
    inputs = check.inputs(Path(src))
    onnx = onnx_outputs(Path(folder) / card.onnx_file, card, inputs)
    ref = check.reference(variant, Path(src), inputs)
    compared = sorted(set(onnx) & set(ref))
    if not compared:
        raise ExportError(
            f"{variant.id}: the graph outputs {sorted(onnx)} include none of {sorted(ref)} that the {card.task} check "
            "compares with PyTorch; fix the exporter or register a TaskCheck for this graph"
        )
    results: dict[str, Any] = {}
    for name in compared:
        a, b = np.asarray(onnx[name], dtype=np.float32), np.asarray(ref[name], dtype=np.float32)
        if a.shape != b.shape:
            raise ExportError(f"{variant.id}: ONNX output {name!r} has shape {a.shape}, PyTorch {b.shape}; re-export")
        diff = np.abs(a - b)
        max_diff = float(diff.max()) if np.isfinite(diff).all() else float("inf")
        ref_max = float(np.abs(b).max())
        limit = tol.limit(ref_max)
        results[name] = {"max_abs_diff": max_diff, "atol": tol.atol, "rtol": tol.rtol, "limit": limit,
                         "reference_max_abs": ref_max, "inputs": inputs.description}
        logger.info("export check %s %s: max abs diff %.3g (limit %.3g)", variant.id, name, max_diff, limit)
        if not max_diff <= limit:
            raise ExportError(
                f"{variant.id}: ONNX output {name!r} differs from PyTorch by max abs {max_diff:.4g}, above the tolerance "
                f"{limit:.4g} (atol {tol.atol:g} + rtol {tol.rtol:g} x max|ref| {ref_max:.4g}) on {inputs.description}; "
                "the export is wrong: re-export, or raise export_validation tolerances in configs/pipeline.yaml "
                "if the difference is expected"
            )
    return results
