"""causal-lm: perplexity gate, decoder export check, pyfunc generation and the decode benchmark."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from slmops.taskdefs.base import (
    TEXTS,
    FixedInputs,
    GateModel,
    encode_fixed,
    eval_sentences,
    eval_text,
    load_torch,
    percentiles,
)

if TYPE_CHECKING:
    from slmops.catalog.schema import Variant
    from slmops.runtime.decoder import TextModel

TASK = "causal-lm"
GREEDY_PROMPTS = 4  # first queries of sentences.json continued greedily (information, not gated)
GREEDY_TOKENS = 16


class Gate(GateModel):
    max_ppl_ratio: float = Field(gt=1.0, description="Candidate PPL / reference PPL must not exceed this.")
    min_top1_agreement: float = Field(ge=0.0, le=1.0, description="Teacher-forced argmax agreement with the reference.")


# -- quality -----------------------------------------------------------------------------------------------
def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def outputs(model: TextModel, *, window: int = 512, max_tokens: int = 4096) -> dict[str, np.ndarray]:
    """Per-position NLL and argmax over the eval text, in non-overlapping windows, and greedy continuations."""
    ids = model.tokenizer.encode(eval_text(), add_special_tokens=False)[:max_tokens]
    window = min(window, model.card.context_length)
    nll, argmax = [], []
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window + 1]
        if len(chunk) < 2:
            break
        logp = _log_softmax(model.logits(chunk[:-1]).astype(np.float64))
        target = np.asarray(chunk[1:])
        nll.append(-logp[np.arange(len(target)), target])
        argmax.append(logp.argmax(axis=-1))
    prompts = eval_sentences()["queries"][:GREEDY_PROMPTS]
    greedy = [model.generate(p, max_tokens=GREEDY_TOKENS, temperature=0.0, ignore_eos=True) for p in prompts]
    return {"nll": np.concatenate(nll), "argmax": np.concatenate(argmax), "greedy": np.asarray(greedy, dtype=object)}


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def metrics(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray], gate: Gate) -> dict[str, float]:
    """Perplexity, its ratio to the reference, teacher-forced top-1 agreement, and (information)
    greedy-continuation agreement: the share of prompts continued identically and the mean share
    of the reference continuation's characters reproduced before the first difference."""
    ppl = float(np.exp(candidate["nll"].mean()))
    ref_ppl = float(np.exp(reference["nll"].mean()))
    pairs = list(zip(candidate["greedy"], reference["greedy"], strict=True))
    return {
        "greedy_exact": float(np.mean([a == b for a, b in pairs])),
        "greedy_prefix": float(np.mean([_common_prefix(a, b) / max(len(b), 1) for a, b in pairs])),
        "ppl": ppl,
        "ref_ppl": ref_ppl,
        "ppl_ratio": ppl / ref_ppl,
        "top1_agreement": float((candidate["argmax"] == reference["argmax"]).mean()),
        "eval_tokens": float(candidate["nll"].size),
    }


# -- export ------------------------------------------------------------------------------------------------
def card_fields(src: Path, config: dict[str, Any]) -> dict[str, Any]:
    return {}


def export_inputs(src: Path) -> FixedInputs:
    return encode_fixed(src, [TEXTS[1]])


def torch_reference(variant: Variant, src: Path, inputs: FixedInputs) -> dict[str, Any]:
    import torch

    model = load_torch("AutoModelForCausalLM", src, remote_code=variant.remote_code)
    feed = {n: torch.from_numpy(inputs.arrays[n]) for n in ("input_ids", "attention_mask")}
    with torch.inference_mode():
        out = model(**feed, use_cache=False)
    return {"logits": out.logits.float().numpy()}


# -- pyfunc ------------------------------------------------------------------------------------------------
def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    # No input schema, on purpose: MLflow's enforcement of a column schema turns a str or list[str] into a column
    # named 0 and drops it, and turns a dict of lists into one row of lists. Without one, predict gets the input as
    # given and rows() reads every shape, raising PyfuncInputError that names the expected columns.
    params = ParamSchema(
        [
            ParamSpec("max_tokens", "long", 256),
            ParamSpec("temperature", "double", 0.7),
            ParamSpec("top_k", "long", 0),
            ParamSpec("top_p", "double", 1.0),
            ParamSpec("repetition_penalty", "double", 1.0),
            ParamSpec("seed", "long", None),
        ]
    )
    return ModelSignature(inputs=None, outputs=Schema([ColSpec("string")]), params=params)


TEXT_COLUMN = "prompt"


def _request(i: int, row: dict[str, Any]) -> tuple[str | None, list[dict[str, str]] | None]:
    """(prompt, messages) of row ``i``: chat ``messages`` (a JSON list) when given, else the ``prompt`` string."""
    from slmops.errors import PyfuncInputError

    messages = row.get("messages")
    if isinstance(messages, str) and messages:
        try:
            return None, json.loads(messages)
        except json.JSONDecodeError as exc:
            raise PyfuncInputError(
                f"row {i}: 'messages' is not JSON ({exc.msg}); pass a JSON list of {{'role', 'content'}} objects"
            ) from None
    if isinstance(row.get("prompt"), str):
        return row["prompt"], None
    raise PyfuncInputError(
        f"row {i} has neither a string 'prompt' nor 'messages' (got columns {sorted(row)}); "
        "a causal-lm model takes a str, a list of str, or a DataFrame / dict of lists "
        "with a 'prompt' or 'messages' column"
    )


def _options(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def predict(model: TextModel, rows: list[dict[str, Any]], params: dict[str, Any]) -> list[str]:
    """One completion per row: ``messages`` (JSON list of chat messages) or ``prompt``; plain prompts batched."""
    options = _options(params)
    out: list[str] = [""] * len(rows)
    plain: dict[int, str] = {}  # rows with a plain prompt go through generate_batch together
    for i, row in enumerate(rows):
        prompt, messages = _request(i, row)
        if prompt is None:
            out[i] = model.generate(messages=messages, **options)
        else:
            plain[i] = prompt
    if plain:
        for i, text in zip(plain, model.generate_batch(list(plain.values()), **options), strict=True):
            out[i] = text
    return out


def predict_stream(model: TextModel, rows: list[dict[str, Any]], params: dict[str, Any]) -> Any:
    """Text deltas of the single row's completion (MLflow's predict_stream takes one input)."""
    from slmops.errors import PyfuncInputError

    if len(rows) != 1:
        raise PyfuncInputError(f"predict_stream takes one prompt, got {len(rows)} rows; call it once per prompt")
    prompt, messages = _request(0, rows[0])
    return model.stream(prompt, messages=messages, **_options(params))


# -- benchmark ---------------------------------------------------------------------------------------------
def bench(model: TextModel, spec: dict[str, Any]) -> dict[str, Any]:
    """TTFT, decode tokens/s and per-token latency at each configured prompt length, greedy, EOS ignored."""
    from slmops.runtime.params import GenerationParams

    text_ids = model.tokenizer.encode(eval_text(), add_special_tokens=False)
    params = GenerationParams(max_tokens=spec["new_tokens"], temperature=0.0, ignore_eos=True)
    by_length, skipped = {}, {}
    for length in spec["prompt_tokens"]:
        if length + spec["new_tokens"] > model.card.context_length:
            skipped[str(length)] = (
                f"{length} + {spec['new_tokens']} tokens exceed the context length {model.card.context_length}"
            )
            continue
        prompt = (text_ids * (length // max(len(text_ids), 1) + 1))[:length]
        ttft: list[float] = []
        rates: list[float] = []
        step_ms: list[float] = []
        for run in range(spec["warmup"] + spec["repeats"]):
            start = time.perf_counter()
            stamps = [time.perf_counter() for _ in model.token_stream(prompt, params)]
            if run < spec["warmup"]:
                continue
            ttft.append((stamps[0] - start) * 1000)
            rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
            step_ms.extend(np.diff(stamps) * 1000)
        by_length[str(length)] = {
            "ttft_ms": float(np.median(ttft)),
            "decode_tok_s": float(np.median(rates)),
            "token_latency_ms": percentiles(step_ms),
            "ttft_ms_runs": ttft,  # every timed repeat: the benchmark stage records their spread
            "decode_tok_s_runs": rates,
        }
    head = by_length.get(str(spec["headline_prompt_tokens"])) or next(iter(by_length.values()), {})
    longest = max((int(n) for n in by_length), default=0)
    return {
        **head,
        "by_prompt_tokens": by_length,
        "skipped_prompt_tokens": skipped,
        "prompt_tokens": spec["headline_prompt_tokens"],
        "new_tokens": spec["new_tokens"],
        "max_prompt_tokens": longest,
        "max_context": longest + spec["new_tokens"],
    }
