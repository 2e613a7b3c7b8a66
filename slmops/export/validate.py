"""Export validation: every exported graph against PyTorch on fixed inputs, with the diffs recorded.

What each task feeds and compares lives in the task's module (``export_inputs`` and
``torch_reference``, see :mod:`slmops.taskdefs.base`); an exporter whose sources transformers
cannot load brings its own reference (``slmops.export.exporters.REFERENCES``). The ONNX side is
generic: every graph input is fed from the fixed inputs by name, and a decoder's
``past_key_values.*`` get an empty cache (past length 0), so optimum's graph, the genai
builder's fused graph and any later exporter's graph are checked the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmops.catalog.schema import Variant
from slmops.errors import ExportError
from slmops.export.config import ValidationConfig
from slmops.runtime.card import ModelCard
from slmops.taskdefs.base import FixedInputs
from slmops.tasks import get_task

logger = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
}
Reference = Callable[[Variant, Path, FixedInputs], dict[str, Any]]


# -- ONNX side and comparison ------------------------------------------------------------------------
def onnx_outputs(path: Path, card: ModelCard, inputs: FixedInputs) -> dict[str, Any]:
    """Run the graph at ``path`` on the fixed inputs; a decoder gets an empty KV cache (past length 0)."""
    import numpy as np

    from slmops.runtime.decoder import LOGITS_TO_KEEP
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
        elif node.name == LOGITS_TO_KEEP:  # the genai export's: every position's logits are compared
            feed[node.name] = np.asarray([seq], dtype=dtype)
        elif node.name.startswith("past_key_values."):
            heads = node.shape[1] if isinstance(node.shape[1], int) else card.kv_heads
            head_dim = node.shape[3] if isinstance(node.shape[3], int) else card.head_dim
            feed[node.name] = np.zeros((batch, heads, 0, head_dim), dtype=dtype)
        else:
            raise ExportError(
                f"{path} has an input {node.name!r} that the export check cannot feed; "
                f"give task {card.task!r}'s export_inputs() in its slmops.taskdefs module that input"
            )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed), strict=False))


def validate_export(
    variant: Variant,
    *,
    src: Path,
    folder: Path,
    card: ModelCard,
    config: ValidationConfig,
    reference: Reference | None = None,
) -> dict[str, Any]:
    """Compare the graph in ``folder`` with the PyTorch model in ``src`` on fixed inputs.

    ``reference`` computes PyTorch's outputs when the task's own (transformers) cannot load ``src``.
    Returns ``{output: {max_abs_diff, atol, rtol, limit, reference_max_abs, inputs}}`` for the
    manifest. Raises ExportError naming the output, its diff and the tolerance when one exceeds it.
    """
    import numpy as np

    task = get_task(card.task).impl()
    tol = config.tolerance(card.task)
    inputs = task.export_inputs(Path(src))
    onnx = onnx_outputs(Path(folder) / card.onnx_file, card, inputs)
    ref = (reference or task.torch_reference)(variant, Path(src), inputs)
    compared = sorted(set(onnx) & set(ref))
    if not compared:
        raise ExportError(
            f"{variant.id}: the graph outputs {sorted(onnx)} include none of {sorted(ref)} that the {card.task} check "
            "compares with PyTorch; fix the exporter, or the task's torch_reference() in slmops.taskdefs"
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
        results[name] = {
            "max_abs_diff": max_diff,
            "atol": tol.atol,
            "rtol": tol.rtol,
            "limit": limit,
            "reference_max_abs": ref_max,
            "inputs": inputs.description,
        }
        logger.info("export check %s %s: max abs diff %.3g (limit %.3g)", variant.id, name, max_diff, limit)
        if not max_diff <= limit:
            raise ExportError(
                f"{variant.id}: ONNX output {name!r} differs from PyTorch by max abs {max_diff:.4g}, above the "
                f"tolerance {limit:.4g} (atol {tol.atol:g} + rtol {tol.rtol:g} x max|ref| {ref_max:.4g}) "
                f"on {inputs.description}; "
                "the export is wrong: re-export, or raise export_validation tolerances in configs/pipeline.yaml "
                "if the difference is expected"
            )
    return results
