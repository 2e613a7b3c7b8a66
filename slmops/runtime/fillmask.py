"""Fill-mask runtime: the masked-LM head's predictions for each mask token (HF's fill-mask pipeline, torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slmops.errors import GenerationParamsError, ModelLoadError
from slmops.runtime.card import ModelCard
from slmops.runtime.encoder import _check_texts, _EncoderBase
from slmops.runtime.tokenizer import Tokenizer

# transformers' clean_up_tokenization: spaces the WordPiece decoder leaves before punctuation and contractions
_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class FillMaskModel(_EncoderBase):
    """Masked-token predictions of a ``fill-mask`` export (BertForMaskedLM and the like)."""

    concurrent_runs = False  # one padded run per batch, in order: nothing to run at once

    def __init__(self, folder: Path, card: ModelCard, session, *, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(folder, card, session, tokenizer=tokenizer)
        mask = self.tokenizer.mask_token
        mask_id = self.tokenizer.token_to_id(mask) if mask else None
        if mask is None or mask_id is None:
            raise ModelLoadError(
                f"{folder} is a fill-mask model but its tokenizer has no mask token (mask_token={mask!r} in "
                "tokenizer_config.json); re-export it from a folder whose tokenizer defines one"
            )
        self.mask_token: str = mask
        self.mask_token_id: int = mask_id
        self._cleanup = bool(self.tokenizer.config.get("clean_up_tokenization_spaces", False))

    def mask_logits(self, texts: list[str] | str, *, batch_size: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each text: its token ids (unpadded) and the logits (n_masks, vocab) at its mask positions, in order.

        Raises GenerationParamsError when a text lacks the mask token (or loses it to truncation).
        """
        self._require_loaded()
        texts = _check_texts("texts", texts)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise GenerationParamsError(f"batch_size={batch_size!r} must be an integer of at least 1")
        for i, text in enumerate(texts):
            if self.mask_token not in text:
                raise GenerationParamsError(
                    f"texts[{i}]={text!r} contains no mask token; "
                    f"put {self.mask_token!r} where a word should be predicted"
                )
        out = []
        for start in range(0, len(texts), batch_size):
            feed = self._feed(texts[start : start + batch_size])
            logits = self.session.run(None, feed)[0]
            for row, (ids, mask) in enumerate(zip(feed["input_ids"], feed["attention_mask"], strict=False)):
                ids = ids[mask > 0]
                positions = np.flatnonzero(ids == self.mask_token_id)
                if positions.size == 0 and ids.size >= self.max_length:
                    raise GenerationParamsError(
                        f"texts[{start + row}] loses its {self.mask_token!r} to truncation "
                        f"at {self.max_length} tokens; "
                        "shorten the text or move the mask token earlier"
                    )
                if positions.size == 0:
                    raise ModelLoadError(
                        f"the tokenizer of {self.folder} splits {self.mask_token!r} instead of mapping it to id "
                        f"{self.mask_token_id}; re-export with a tokenizer.json that declares it a special token"
                    )
                out.append((ids, logits[row, positions].astype(np.float32)))
        return out

    def warm_up(self) -> None:
        self.fill_mask(f"warm {self.mask_token}", top_k=1)

    def fill_mask(self, text: str, *, top_k: int = 5) -> list[list[dict[str, Any]]]:
        """The ``top_k`` most likely tokens for each mask token in ``text``, best first.

        One list per mask token, in order (also for a single mask, where transformers' fill-mask
        pipeline returns the inner list alone), of ``{"score", "token", "token_str", "sequence"}`` as
        that pipeline builds them: score is the softmax probability, sequence the decoded text with
        that mask filled (special tokens kept when there are several masks, as the pipeline does).
        Raises GenerationParamsError when ``text`` has no mask token or ``top_k`` is not a positive integer.
        """
        if not isinstance(text, str):
            raise GenerationParamsError(f"text={text!r} must be a string containing {self.mask_token!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise GenerationParamsError(f"top_k={top_k!r} must be an integer of at least 1")
        ((ids, logits),) = self.mask_logits([text])
        top_k = min(top_k, logits.shape[-1])
        probs = _softmax(logits.astype(np.float64))
        positions = np.flatnonzero(ids == self.mask_token_id)
        single = positions.size == 1
        results = []
        for pos, p in zip(positions, probs, strict=False):
            best = np.argsort(-p, kind="stable")[:top_k]
            row = []
            for token in best:
                filled = ids.copy()
                filled[pos] = token
                row.append(
                    {
                        "score": float(p[token]),
                        "token": int(token),
                        "token_str": self._decode([int(token)], skip_special_tokens=False),
                        "sequence": self._decode([int(t) for t in filled], skip_special_tokens=single),
                    }
                )
            results.append(row)
        return results

    def _decode(self, ids: list[int], *, skip_special_tokens: bool) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        if self._cleanup:
            for old, new in _CLEANUP:
                text = text.replace(old, new)
        return text
