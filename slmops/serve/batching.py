"""The KV state of a decode batch whose rows come and go between steps, one class per padding kind.

A request's prompt runs alone (:meth:`prefill`, batch 1, exactly as :meth:`TextModel.token_stream` runs it);
its cache then joins the batch (:meth:`add`), and finished rows leave it (:meth:`keep`). Every decode
:meth:`step` is one graph call for all rows. How rows of different lengths share one cache follows
:mod:`slmops.runtime.batch`:

* optimum's decoder (``left``): a row's past is padded on the left to the longest row's, the attention mask
  hides the pads and the position ids count real tokens only, so each row sees the positions it would alone.
* onnxruntime-genai's GroupQueryAttention graph (``right``): one preallocated buffer per layer, each row's
  keys from position 0 and its length tracked on its own (``seqlens_k``). Joining or leaving copies the rows
  into a new buffer sized to the rows' needs (their prompt + max_tokens).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from slmops.runtime.decoder import TextModel


class LeftPaddedBatch:
    """Rows of optimum's decoder-with-past: numpy caches concatenated inside the graph."""

    def __init__(self, model: TextModel) -> None:
        self.graph = model.graph
        self.cache: list[np.ndarray] = self.graph.empty_cache(batch=0)
        self.mask = np.zeros((0, 0), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.mask)

    def prefill(self, ids: list[int], capacity: int) -> tuple[np.ndarray, Any]:
        """The last logits of ``ids`` run alone, and the row's state for :meth:`add`."""
        logits, cache = self.graph.forward(np.asarray([ids], dtype=np.int64), self.graph.empty_cache(batch=1))
        return logits[0, -1], cache

    def add(self, row: Any, capacity: int) -> None:
        width = max(self.mask.shape[1], row[0].shape[2])
        mask = np.ones((1, row[0].shape[2]), dtype=np.int64)
        self.cache = [
            np.concatenate([_left_pad(old, width), _left_pad(new, width)])
            for old, new in zip(self.cache, row, strict=True)
        ]
        self.mask = np.concatenate([_left_pad_mask(self.mask, width), _left_pad_mask(mask, width)])

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order); pad columns no row needs are dropped."""
        self.cache = [c[rows] for c in self.cache]
        self.mask = self.mask[rows]
        used = np.flatnonzero(self.mask.any(axis=0))
        start = int(used[0]) if used.size else self.mask.shape[1]
        if start:
            self.cache = [c[:, :, start:] for c in self.cache]
            self.mask = self.mask[:, start:]

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row; the next logits (rows, vocab)."""
        self.mask = np.concatenate([self.mask, np.ones((len(tokens), 1), dtype=np.int64)], axis=1)
        logits, self.cache = self.graph.forward(tokens[:, None], self.cache, attention_mask=self.mask)
        return logits[:, -1]


def _left_pad(cache: np.ndarray, width: int) -> np.ndarray:
    pad = width - cache.shape[2]
    return cache if pad == 0 else np.pad(cache, ((0, 0), (0, 0), (pad, 0), (0, 0)))


def _left_pad_mask(mask: np.ndarray, width: int) -> np.ndarray:
    pad = width - mask.shape[1]
    return mask if pad == 0 else np.pad(mask, ((0, 0), (pad, 0)))


class RightPaddedBatch:
    """Rows of the GroupQueryAttention graph in numpy buffers the session reads and writes in place."""

    def __init__(self, model: TextModel) -> None:
        self.graph = model.graph
        self.buffers: list[np.ndarray] = []
        self.lengths = np.zeros(0, dtype=np.int64)
        self.capacities = np.zeros(0, dtype=np.int64)  # each row's prompt + max_tokens
        self.cache: Any = None

    def __len__(self) -> int:
        return len(self.lengths)

    def _bind(self, buffers: list[np.ndarray]) -> Any:
        from onnxruntime import OrtValue

        from slmops.runtime.decoder import SharedKVCache

        # on the CPU an OrtValue made from an array shares its memory: the graph's writes land in ``buffers``
        values = [OrtValue.ortvalue_from_numpy(b) for b in buffers]
        return SharedKVCache(values, buffers[0].shape[2])

    def _alloc(self, batch: int, capacity: int) -> list[np.ndarray]:
        return [np.zeros((batch, h, capacity, d), dtype=self.graph.kv_dtype) for h, d in self.graph.kv_shapes]

    def prefill(self, ids: list[int], capacity: int) -> tuple[np.ndarray, Any]:
        buffers = self._alloc(1, capacity)
        cache = self._bind(buffers)
        # as TextModel.token_stream: in chunks, the LM head on the last position only (when the graph can)
        last, _ = self.graph.prefill(np.asarray([ids], dtype=np.int64), cache)
        return last[0], (buffers, len(ids))

    def add(self, row: Any, capacity: int) -> None:
        buffers, length = row
        self._rebuild(extra=(buffers, length), capacities=np.append(self.capacities, capacity))

    def keep(self, rows: list[int]) -> None:
        self._rebuild(rows=rows, capacities=self.capacities[rows])

    def _rebuild(
        self,
        *,
        extra: tuple[list[np.ndarray], int] | None = None,
        rows: list[int] | None = None,
        capacities: np.ndarray,
    ) -> None:
        """The kept rows (all without ``rows``), then ``extra``, copied into buffers sized to their needs."""
        old_rows = list(range(len(self.lengths))) if rows is None else rows
        lengths = self.lengths[old_rows]
        if extra is not None:
            lengths = np.append(lengths, extra[1])
        self.capacities = capacities
        if not len(lengths):
            self.buffers, self.lengths, self.cache = [], lengths, None
            return
        capacity = int(capacities.max())
        new = self._alloc(len(lengths), capacity)
        for layer, buf in enumerate(new):
            for b, old in enumerate(old_rows):
                n = int(self.lengths[old])
                buf[b, :, :n] = self.buffers[layer][old, :, :n]
            if extra is not None:
                buf[-1, :, : extra[1]] = extra[0][layer][0, :, : extra[1]]
        self.buffers, self.lengths, self.cache = new, lengths, self._bind(new)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.lengths = self.lengths + 1
        mask = (np.arange(int(self.lengths.max()))[None, :] < self.lengths[:, None]).astype(np.int64)
        logits, self.cache = self.graph.forward(tokens[:, None], self.cache, attention_mask=mask)
        return logits[:, -1]


# which batch each graph kind supports (ModelCard.graph -> batch state)
BATCHES: dict[str, type[LeftPaddedBatch] | type[RightPaddedBatch]] = {
    "optimum-decoder": LeftPaddedBatch,
    "genai-decoder": RightPaddedBatch,
}
