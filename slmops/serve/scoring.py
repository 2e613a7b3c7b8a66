"""Log-probabilities for ``/v1/completions`` (``logprobs``, ``echo``), computed from :meth:`TextModel.logits`.

This is what lm-evaluation-harness' ``local-completions`` scores loglikelihood tasks with: it sends the
context and continuation with ``echo=true, max_tokens=1, logprobs=1`` and sums ``token_logprobs`` over the
continuation's tokens. The values are the model's raw next-token distribution (no temperature, no top-k/p),
as OpenAI and vLLM report them. Generated tokens are scored in one teacher-forced pass after generation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slmops.runtime.decoder import TextModel
from slmops.runtime.tokenizer import Tokenizer

WINDOW = 6  # tokens of left context decoded with each token, so spaces and multi-byte characters come out right


def token_texts(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """Each token's text as it reads in the sequence (what it adds to the decoded text so far)."""
    texts = []
    for i in range(len(ids)):
        start = max(0, i - WINDOW)
        before = tokenizer.decode(ids[start:i])
        after = tokenizer.decode(ids[start : i + 1])
        texts.append(after[len(before) :] if after.startswith(before) else tokenizer.decode(ids[i : i + 1]))
    return texts


def covering(texts: list[str], length: int) -> int:
    """How many of the tokens ``texts`` it takes to cover ``length`` characters (a stop string may cut the last)."""
    total = 0
    for n, text in enumerate(texts):
        if total >= length:
            return n
        total += len(text)
    return len(texts)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def logprobs(
    model: TextModel, prompt_ids: list[int], generated_ids: list[int], generated_text: str, *, top: int, echo: bool
) -> dict[str, Any]:
    """OpenAI's legacy ``logprobs`` object for the prompt's tokens (when ``echo``) and the generated ones.

    ``text_offset`` indexes the concatenation of the listed tokens' texts, starting at the prompt.
    The first token of a sequence has no log-probability (``None``), as in OpenAI's answers.
    """
    tokenizer = model.tokenizer
    texts = token_texts(tokenizer, [*prompt_ids, *generated_ids])
    generated_texts = texts[len(prompt_ids) :]
    kept = len(generated_ids)  # every generated token, unless a stop string cut the text inside them
    if sum(map(len, generated_texts)) > len(generated_text):
        kept = covering(generated_texts, len(generated_text))
    ids = [*prompt_ids, *generated_ids[:kept]]
    texts = texts[: len(ids)]
    lp = log_softmax(model.logits(ids))
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in texts])[:-1]]).astype(int).tolist()
    first = 0 if echo else len(prompt_ids)
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for i in range(first, len(ids)):
        out["tokens"].append(texts[i])
        out["text_offset"].append(offsets[i])
        if i == 0:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        row = lp[i - 1]
        out["token_logprobs"].append(float(row[ids[i]]))
        best = np.argsort(-row, kind="stable")[:top]
        out["top_logprobs"].append({tokenizer.decode([int(j)]): float(row[j]) for j in best})
    return out
