"""Choosing the next token from logits: repetition penalty, temperature, top-k, top-p."""

from __future__ import annotations

import numpy as np

from slmops.runtime.params import GenerationParams


class Sampler:
    """Stateful next-token picker; one per generation so a seed makes runs reproducible."""

    def __init__(self, params: GenerationParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, seen: np.ndarray) -> int:
        """Pick a token id from 1-D ``logits``; ``seen`` are the ids (prompt + generated) for the penalty."""
        p = self.params
        if p.temperature == 0.0 and p.repetition_penalty == 1.0:  # greedy: no copy of the 49k-entry row
            return int(np.argmax(logits))
        logits = logits.astype(np.float32, copy=True)
        if p.repetition_penalty != 1.0 and seen.size:
            ids = np.unique(seen)
            picked = logits[ids]
            logits[ids] = np.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        logits /= p.temperature
        if 0 < p.top_k < logits.size:
            kth = np.partition(logits, -p.top_k)[-p.top_k]
            logits[logits < kth] = -np.inf
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, p.top_p)) + 1]
            mask = np.zeros_like(probs, dtype=bool)
            mask[keep] = True
            probs = np.where(mask, probs, 0.0)
            probs /= probs.sum()
        return int(self.rng.choice(probs.size, p=probs))
