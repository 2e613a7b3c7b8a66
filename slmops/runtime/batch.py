"""A batch of prompts through one graph call per step, each sequence stopping on its own.

How prompts of different lengths share a batch depends on the graph (data, not branches):

* optimum's decoder (``left`` padding): pads go before each prompt and the attention mask
  hides them; position ids count real tokens only (``cumsum(mask) - 1``), so every row sees
  the positions it would see alone. The KV cache grows by one column per step for all rows.
* onnxruntime-genai's GroupQueryAttention graph (``right`` padding): the graph has no
  position ids; it turns the mask into ``seqlens_k = mask.sum(1) - 1`` (each row's length
  minus one) and ``total_sequence_length = mask.shape[1]``. GQA takes rotary positions and
  the slot of each row's new keys from ``seqlens_k``, so a left pad would shift every
  position of that row (wrong rotary angles). Right padding is what it supports: the prompt
  pass runs all rows padded on the right, then each step writes row b's new token at its own
  length, overwriting the pad keys there; keys past a row's length are never attended to.

A finished row keeps feeding a pad token until the whole batch is done (its output is
ignored); the batch never shrinks, which keeps the preallocated GQA buffers in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from slmops.runtime.params import GenerationParams
from slmops.runtime.sampling import Sampler

if TYPE_CHECKING:
    from slmops.runtime.decoder import OnnxDecoderGraph, TextModel


class LeftPadded:
    """Rows padded on the left; one growing cache; the mask gains a column of ones per step."""

    def __init__(self, graph: OnnxDecoderGraph, rows: list[list[int]], *, pad_id: int, capacity: int) -> None:
        self.graph = graph
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        self.mask = np.zeros((len(rows), width), dtype=np.int64)
        for b, row in enumerate(rows):
            ids[b, width - len(row) :] = row
            self.mask[b, width - len(row) :] = 1
        logits, self.cache = graph.forward(
            ids, graph.empty_cache(batch=len(rows), capacity=capacity), attention_mask=self.mask
        )
        self.logits = logits[:, -1]

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row; the next logits (batch, vocab)."""
        self.mask = np.concatenate([self.mask, np.ones((len(tokens), 1), dtype=np.int64)], axis=1)
        logits, self.cache = self.graph.forward(tokens[:, None], self.cache, attention_mask=self.mask)
        return logits[:, -1]


class RightPadded:
    """Rows padded on the right in one preallocated GQA buffer; each row's length tracked on its own."""

    def __init__(self, graph: OnnxDecoderGraph, rows: list[list[int]], *, pad_id: int, capacity: int) -> None:
        self.graph = graph
        self.lengths = np.asarray([len(r) for r in rows], dtype=np.int64)
        width = int(self.lengths.max())
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = row
        logits, self.cache = graph.forward(
            ids, graph.empty_cache(batch=len(rows), capacity=capacity), attention_mask=self._mask()
        )
        self.logits = logits[np.arange(len(rows)), self.lengths - 1]

    def _mask(self) -> np.ndarray:
        return (np.arange(int(self.lengths.max()))[None, :] < self.lengths[:, None]).astype(np.int64)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.lengths = self.lengths + 1
        logits, self.cache = self.graph.forward(tokens[:, None], self.cache, attention_mask=self._mask())
        return logits[:, -1]


# which padding each graph kind supports (ModelCard.graph -> batch runner)
PADDING: dict[str, type[LeftPadded] | type[RightPadded]] = {"optimum-decoder": LeftPadded, "genai-decoder": RightPadded}


def generate_token_batch(model: TextModel, rows: list[list[int]], params: GenerationParams) -> list[list[int]]:
    """Generated token ids for each prompt row (already fitted to the context), stopping each row on its own
    at an end token, a stop token, a stop string or ``max_tokens``; the same ids as :meth:`TextModel.token_stream`
    gives for that row alone."""
    end = set(params.stop_token_ids) | (set() if params.ignore_eos else set(model.card.eos_token_ids))
    pad_id = model.card.pad_token_id if model.card.pad_token_id is not None else model.tokenizer.pad_id
    runner = PADDING[model.card.graph](
        model.graph, rows, pad_id=pad_id, capacity=max(len(r) for r in rows) + params.max_tokens
    )
    samplers = [Sampler(params) for _ in rows]  # one generator per row: a row samples as it would alone
    seen = [np.asarray(r, dtype=np.int64) for r in rows]
    out: list[list[int]] = [[] for _ in rows]
    active = [True] * len(rows)
    stopped = _stop_check(model, params.stop)
    logits = runner.logits
    while True:
        tokens = np.full(len(rows), pad_id, dtype=np.int64)
        for b in range(len(rows)):
            if not active[b]:
                continue
            token = samplers[b](logits[b], seen[b])
            if token in end:
                active[b] = False
                continue
            out[b].append(token)
            tokens[b] = token
            seen[b] = np.append(seen[b], token)
            if len(out[b]) == params.max_tokens or stopped(out[b]):
                active[b] = False
        if not any(active):
            return out
        logits = runner.step(tokens)


def _stop_check(model: TextModel, stops: tuple[str, ...]) -> Callable[[list[int]], bool]:
    """Whether a row's text so far contains a stop string (the text itself is cut later by _text_deltas)."""
    if not stops:
        return lambda tokens: False
    return lambda tokens: any(s in model.tokenizer.decode(tokens) for s in stops)
