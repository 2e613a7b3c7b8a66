"""Encoder runtimes: sentence embeddings (pooling + normalisation as in sentence-transformers) and reranking."""

from __future__ import annotations

import json
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


class _EncoderBase(LoadedModel):
    def __init__(self, folder: Path, card: ModelCard, session) -> None:
        super().__init__(folder, card)
        self.session = session
        self.tokenizer = Tokenizer(folder)
        self.input_names = [i.name for i in session.get_inputs()]
        st_config = self.folder / "sentence_bert_config.json"
        st_max = json.loads(st_config.read_text()).get("max_seq_length") if st_config.is_file() else None
        self.max_length = int(st_max or card.context_length)

    def _release(self) -> None:
        self.session = None

    def _feed(self, batch: list[str] | list[tuple[str, str]]) -> dict[str, np.ndarray]:
        ids, mask, types = self.tokenizer.encode_batch(batch, max_length=self.max_length)
        arrays = {
            "input_ids": np.asarray(ids, dtype=np.int64),
            "attention_mask": np.asarray(mask, dtype=np.int64),
            "token_type_ids": np.asarray(types, dtype=np.int64),
        }
        return {name: arrays[name] for name in self.input_names}


class EmbeddingModel(_EncoderBase):
    """Sentence embeddings matching sentence-transformers' output for the same model."""

    def warm_up(self) -> None:
        self.embed(["warm-up"])

    def embed(self, texts: list[str] | str, *, batch_size: int = 32) -> np.ndarray:
        """Embeddings (n, dim), float32; L2-normalised when the model's pipeline normalises."""
        self._require_loaded()
        texts = _check_texts("texts", texts)
        if batch_size < 1:
            raise GenerationParamsError(f"batch_size={batch_size} must be at least 1")
        pooling = self.card.pooling
        out = []
        for start in range(0, len(texts), batch_size):
            feed = self._feed(texts[start : start + batch_size])
            hidden = self.session.run(None, feed)[0].astype(np.float32)
            out.append(
                pool(
                    hidden,
                    feed["attention_mask"],
                    mode=pooling.mode if pooling else "mean",
                    normalize=pooling is None or pooling.normalize,
                )
            )
        return np.concatenate(out, axis=0)


class RerankModel(_EncoderBase):
    """Cross-encoder relevance scores for (query, document) pairs."""

    def warm_up(self) -> None:
        self.scores("warm", ["up"])

    def scores(self, query: str, documents: list[str], *, batch_size: int = 32) -> np.ndarray:
        """Raw relevance logits, one per document."""
        self._require_loaded()
        (query,) = _check_texts("query", [query])
        documents = _check_texts("documents", documents)
        out = []
        for start in range(0, len(documents), batch_size):
            pairs = [(query, d) for d in documents[start : start + batch_size]]
            logits = self.session.run(None, self._feed(pairs))[0]
            out.append(logits[:, 0] if logits.ndim == 2 else logits)
        return np.concatenate(out).astype(np.float32)

    def rerank(self, query: str, documents: list[str], *, top_k: int | None = None) -> list[tuple[int, float]]:
        """(index, score) pairs, best first."""
        scores = self.scores(query, documents)
        order = np.argsort(-scores, kind="stable")
        if top_k is not None:
            order = order[:top_k]
        return [(int(i), float(scores[i])) for i in order]
