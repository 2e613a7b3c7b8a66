"""What every task module shares: the shipped evaluation data, fixed export-check inputs, gate checks, timing.

A task module (one per row of :data:`slmops.tasks.TASKS`) defines:

* ``Gate``: its thresholds in ``configs/gates.yaml`` (a :class:`GateModel`; ``check(metrics)`` lists failures);
* ``outputs(model)`` and ``metrics(candidate, reference, gate)``: quality against the reference export;
* ``card_fields(src, config)``: task-specific model-card fields read from the fetched HF folder;
* ``export_inputs(src)`` and ``torch_reference(variant, src, inputs)``: the export check against PyTorch;
* ``signature()`` and ``predict(model, rows, params)``: the MLflow pyfunc flavour;
* ``bench(model, spec)``: the benchmark routine run in the worker subprocess.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at one hundred degrees Celsius at sea level, and freezes at zero.",
)
QUERY = "At what temperature does water boil?"


# -- shipped evaluation data ---------------------------------------------------------------------------
def eval_text() -> str:
    """The fixed evaluation text shipped with slmops (public-domain prose and a little code)."""
    return resources.files("slmops.taskdefs").joinpath("data/eval_text.txt").read_text(encoding="utf-8")


def eval_sentences() -> dict[str, Any]:
    """Queries, documents and the relevant document per query, shipped with slmops."""
    return json.loads(resources.files("slmops.taskdefs").joinpath("data/sentences.json").read_text(encoding="utf-8"))


# -- gates -----------------------------------------------------------------------------------------------
class GateModel(BaseModel):
    """Base of each task's ``Gate``: ``min_<metric>`` / ``max_<metric>`` fields checked against the metrics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def check(self, metrics: dict[str, float]) -> list[str]:
        """Reasons ``metrics`` fail this gate (empty: passed)."""
        reasons = []
        for field, limit in self.model_dump().items():
            kind, _, metric = field.partition("_")
            if kind not in ("min", "max"):
                continue
            value = metrics.get(metric)
            if value is None:
                reasons.append(f"{metric} was not measured")
            elif kind == "min" and value < limit:
                reasons.append(f"{metric} {value:.4f} < {limit}")
            elif kind == "max" and value > limit:
                reasons.append(f"{metric} {value:.4f} > {limit}")
        return reasons


# -- export check ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FixedInputs:
    """Token arrays (batch, seq) fed to both PyTorch and the graph, and a description recorded in the manifest."""

    arrays: dict[str, Any]
    description: str


def encode_fixed(src: Path, batch: list[str] | list[tuple[str, str]]) -> FixedInputs:
    """Token ids of ``batch`` with the folder's tokenizer.json, right-padded; seeded ids if it has none."""
    config = json.loads((src / "config.json").read_text())
    if not (src / "tokenizer.json").is_file():  # e.g. OpenELM ships no tokenizer
        ids = np.random.default_rng(0).integers(3, config["vocab_size"], size=(len(batch), 16), dtype=np.int64)
        return FixedInputs(
            _arrays(ids, np.ones_like(ids)), f"{ids.shape[0]}x{ids.shape[1]} token ids drawn with seed 0"
        )
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


def _arrays(ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None = None) -> dict[str, Any]:
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids) if types is None else types}


def load_torch(auto_class: str, src: Path, *, remote_code: bool) -> Any:
    """The PyTorch model of ``src`` through transformers' ``auto_class``, fp32, in eval mode."""
    import torch
    import transformers

    cls = getattr(transformers, auto_class)
    return cls.from_pretrained(src, dtype=torch.float32, trust_remote_code=remote_code).eval()


def torch_logits(auto_class: str, src: Path, inputs: FixedInputs, *, remote_code: bool) -> dict[str, Any]:
    """``{"logits": ...}`` of the PyTorch model on the fixed inputs (encoders: with token type ids)."""
    import torch

    model = load_torch(auto_class, src, remote_code=remote_code)
    feed = {n: torch.from_numpy(inputs.arrays[n]) for n in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.inference_mode():
        return {"logits": model(**feed).logits.float().numpy()}


# -- benchmark ---------------------------------------------------------------------------------------------
def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95))}


def bench_items(model: Any, spec: dict[str, Any], run: Callable[[list[str], int], object]) -> dict[str, Any]:
    """Items/s of ``run(texts, batch_size)`` per configured batch size, and batch-1 latency percentiles."""
    data = eval_sentences()
    pool = data["queries"] + data["documents"]
    texts = (pool * (spec["items"] // len(pool) + 1))[: spec["items"]]
    by_batch = {}
    for batch_size in spec["batch_sizes"]:
        rates, latency, p95s = [], [], []  # p95s: batch-1 p95 of each timed repeat, for the spread
        for i in range(spec["warmup"] + spec["repeats"]):
            start = time.perf_counter()
            if batch_size == 1:
                one: list[float] = []
                for text in texts[: min(len(texts), 64)]:
                    t0 = time.perf_counter()
                    run([text], 1)
                    one.append((time.perf_counter() - t0) * 1000)
                latency.extend(one)
                p95s.append(percentiles(one)["p95"])
                n = min(len(texts), 64)
            else:
                run(texts, batch_size)
                n = len(texts)
            if i >= spec["warmup"]:
                rates.append(n / (time.perf_counter() - start))
        by_batch[str(batch_size)] = {
            "items_per_s": float(np.median(rates)),
            "items_per_s_runs": rates,
            **({"latency_ms": percentiles(latency), "latency_p95_ms_runs": p95s[spec["warmup"] :]} if latency else {}),
        }
    largest = by_batch[str(max(spec["batch_sizes"]))]
    max_seq = max(len(ids) for ids in model.tokenizer.encode_batch(texts, max_length=model.max_length)[0])
    single = by_batch.get("1", {}).get("latency_ms")
    return {
        "items_per_s": largest["items_per_s"],
        "items_per_s_runs": largest["items_per_s_runs"],
        **({"latency_p95_ms_runs": by_batch["1"]["latency_p95_ms_runs"]} if "1" in by_batch else {}),
        "batch_size": max(spec["batch_sizes"]),
        "max_seq_tokens": max_seq,
        **({"latency_ms_batch1": single} if single else {}),
        "by_batch_size": by_batch,
    }


def text_column(rows: list[dict[str, Any]], column: str, *, task: str) -> list[str]:
    """The ``column`` of every pyfunc row; raises PyfuncInputError naming the expected column."""
    from slmops.errors import PyfuncInputError

    out = []
    for i, row in enumerate(rows):
        value = row.get(column)
        if not isinstance(value, str):
            raise PyfuncInputError(
                f"row {i} has no string {column!r} (got columns {sorted(row)}); a {task} model takes "
                f"a str, a list of str, or a DataFrame / dict of lists with a {column!r} column"
            )
        out.append(value)
    return out
