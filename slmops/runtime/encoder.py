"""Encoder runtimes: sentence embeddings (pooling + normalisation as in sentence-transformers) and reranking.

Texts are tokenized once, sorted by length and run in sub-batches of similar length (:func:`length_buckets`),
so a short sentence is not padded to the longest one in its batch; results come back in input order.

On CPU a call's runs go to the session ``workers`` at a time (``open_folder`` sets it to the thread count; onnxruntime
runs concurrently on one session), from a session whose intra-op threads sleep rather than spin between parallel
sections. An encoder run is a few hundred tokens through small ops (all-MiniLM-L6-v2: 130 tokens a run on
average), where splitting each op over two threads gains little; two runs at once keep both cores busy instead.
all-MiniLM-L6-v2 dyn-int8-pc, 2 threads, calls of 32 eval sentences, each runtime in its own processes taking
turns with torch fp32 (benchmarks/compare.py's paired machinery, 4 rounds, quiet: no busy round), 2026-12-01:

    intra-op threads, spinning, runs at once    sentences/s vs torch    batch-1 p50 / p95    one 256-token text
    2, spinning, 1 (before)                     2.97x (2.67-3.07)       2.43 / 3.68 ms       24.9 ms
    2, spinning, 2                              2.83x (2.72-2.92)       (oversubscribed)
    1, -, 2                                     4.02-4.04x              2.81 / 4.06 ms       41.0 ms
    2, sleeping, 2 (this)                       3.96x (3.63-4.12)       2.91 / 4.05 ms       27.5 ms
    torch fp32, 2 threads                       1.00x                   9.42 / 12.30 ms      47.3 ms

One intra-op thread would give the same throughput but 1.6x the latency of a single long text; sleeping threads
cost a single short text 0.5 ms. onnxruntime.transformers' BERT fusions measured slower with two runs at once
(3.44x against 4.02x, same rounds).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from slmops.errors import GenerationParamsError
from slmops.runtime.base import LoadedModel
from slmops.runtime.card import ModelCard
from slmops.runtime.tokenizer import Tokenizer


def _check_texts(name: str, texts: object) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts:
        raise GenerationParamsError(f"{name} must be a non-empty list of strings, got {texts!r}")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise GenerationParamsError(f"{name}[{i}]={t!r} must be a non-empty string")
    return list(texts)


def pool(hidden: np.ndarray, attention_mask: np.ndarray, *, mode: str = "mean", normalize: bool = True) -> np.ndarray:
    """sentence-transformers pooling of token states ``[batch, seq, dim]`` (mean over real tokens, CLS or max),
    optionally L2-normalised."""
    mask = attention_mask[..., None].astype(np.float32)
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "max":
        pooled = np.where(mask > 0, hidden, -1e9).max(axis=1)
    else:
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    if normalize:
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return pooled


# What one session run costs beyond its tokens, in padded tokens: length_buckets starts another run only when
# that saves more padding than this. Measured on all-MiniLM-L6-v2 dyn-int8-pc, the 256 eval sentences (6-30
# tokens, 14.7 mean) in calls of 32, against torch fp32 batch by batch in one process, 1 thread, CPU time (load
# 1.8-2.9 from other jobs; wall-clock ratios agreed within 5%): one run per call (padding x2.04) 1.90x torch;
# run_cost 16 3.25x (x1.10 padding); 32 3.18x (x1.16); 96 2.77x. At 2 threads (wall, load 1.6-2.1) 0 gave
# 2.87x (one run per distinct length: 144 runs), 32 3.49x, 64 3.35x, 128 3.15x.
RUN_COST_TOKENS = 32


def length_buckets(lengths: Sequence[int], *, max_batch: int, run_cost: int = RUN_COST_TOKENS) -> list[np.ndarray]:
    """Indices into ``lengths`` grouped into runs of at most ``max_batch`` items of similar length, shortest first.

    Each run is padded to its longest item; the grouping minimises padded tokens plus ``run_cost`` per run
    (an exact split of the length-sorted order by dynamic programming).
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    sorted_lengths = np.asarray(lengths, dtype=np.int64)[order]
    n = len(order)
    best = np.zeros(n + 1)  # best[j]: least cost of the first j sorted items
    cut = np.zeros(n + 1, dtype=np.int64)  # where the last run of those j starts
    for j in range(1, n + 1):
        starts = np.arange(max(0, j - max_batch), j)
        costs = best[starts] + (j - starts) * sorted_lengths[j - 1] + run_cost
        k = int(np.argmin(costs))
        best[j], cut[j] = costs[k], starts[k]
    runs, j = [], n
    while j > 0:
        runs.append(order[cut[j] : j])
        j = int(cut[j])
    return runs[::-1]


class _EncoderBase(LoadedModel):
    concurrent_runs = True  # see the module's docstring

    def __init__(
        self, folder: Path, card: ModelCard, session, *, workers: int = 1, tokenizer: Tokenizer | None = None
    ) -> None:
        super().__init__(folder, card)
        self.session = session
        self.workers = max(1, workers)
        # its threads start on the first call with more than one run
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="slmops-encoder") if self.workers > 1 else None
        self.tokenizer = tokenizer or Tokenizer(folder)
        self.input_names = [i.name for i in session.get_inputs()]
        st_config = self.folder / "sentence_bert_config.json"
        st_max = json.loads(st_config.read_text()).get("max_seq_length") if st_config.is_file() else None
        self.max_length = int(st_max or card.context_length)

    def _release(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.session = None

    def _arrays(self, batch: list[str] | list[tuple[str, str]]) -> dict[str, np.ndarray]:
        """Token ids, attention mask and type ids, right-padded to the batch's longest item."""
        ids, mask, types = self.tokenizer.encode_batch(batch, max_length=self.max_length)
        return {
            "input_ids": np.asarray(ids, dtype=np.int64),
            "attention_mask": np.asarray(mask, dtype=np.int64),
            "token_type_ids": np.asarray(types, dtype=np.int64),
        }

    def _feed(self, batch: list[str] | list[tuple[str, str]]) -> dict[str, np.ndarray]:
        arrays = self._arrays(batch)
        return {name: arrays[name] for name in self.input_names}

    def _runs(
        self,
        items: list[str] | list[tuple[str, str]],
        batch_size: int,
        head: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """``head(first output, attention mask)`` of every item, in input order, over length-bucketed runs."""
        if batch_size < 1:
            raise GenerationParamsError(f"batch_size={batch_size} must be at least 1")
        arrays = self._arrays(items)  # tokenized once, for all runs
        lengths = arrays["attention_mask"].sum(axis=1)
        session = self.session

        def one(run: np.ndarray) -> np.ndarray:
            width = int(lengths[run].max())
            feed = {name: arrays[name][run, :width] for name in self.input_names}  # fancy indexing: contiguous copies
            return head(session.run(None, feed)[0], arrays["attention_mask"][run, :width])

        # at most an equal share of the items per run, so that every worker has a run where the call allows
        share = -(-len(items) // self.workers)
        runs = length_buckets(lengths, max_batch=min(batch_size, share), run_cost=RUN_COST_TOKENS)
        if self._pool is not None and len(runs) > 1:
            # the largest runs first, so the last to start is a small one and the workers end together
            runs.sort(key=lambda run: -len(run) * int(lengths[run].max()))
            results = list(self._pool.map(one, runs))
        else:
            results = [one(run) for run in runs]
        out = np.empty((len(items), *results[0].shape[1:]), dtype=np.float32)
        for run, result in zip(runs, results, strict=True):
            out[run] = result
        return out


class EmbeddingModel(_EncoderBase):
    """Sentence embeddings matching sentence-transformers' output for the same model."""

    def warm_up(self) -> None:
        self.embed(["warm-up"])

    def embed(self, texts: list[str] | str, *, batch_size: int = 32) -> np.ndarray:
        """Embeddings (n, dim), float32; L2-normalised when the model's pipeline normalises."""
        self._require_loaded()
        texts = _check_texts("texts", texts)
        pooling = self.card.pooling
        mode, normalize = (pooling.mode, pooling.normalize) if pooling else ("mean", True)
        return self._runs(texts, batch_size, lambda hidden, mask: pool(hidden, mask, mode=mode, normalize=normalize))


class RerankModel(_EncoderBase):
    """Cross-encoder relevance scores for (query, document) pairs."""

    def warm_up(self) -> None:
        self.scores("warm", ["up"])

    def scores(self, query: str, documents: list[str], *, batch_size: int = 32) -> np.ndarray:
        """Raw relevance logits, one per document."""
        self._require_loaded()
        (query,) = _check_texts("query", [query])
        documents = _check_texts("documents", documents)
        pairs = [(query, d) for d in documents]
        return self._runs(pairs, batch_size, lambda logits, mask: logits[:, 0] if logits.ndim == 2 else logits)

    def rerank(self, query: str, documents: list[str], *, top_k: int | None = None) -> list[tuple[int, float]]:
        """(index, score) pairs, best first."""
        scores = self.scores(query, documents)
        order = np.argsort(-scores, kind="stable")
        if top_k is not None:
            order = order[:top_k]
        return [(int(i), float(scores[i])) for i in order]
