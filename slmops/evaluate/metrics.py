"""Quality metrics of a candidate against its unquantized reference, computed with the slmops runtime."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np

from slmops.runtime.decoder import TextModel
from slmops.runtime.encoder import EmbeddingModel, RerankModel
from slmops.runtime.fillmask import FillMaskModel


def eval_text() -> str:
    """The fixed evaluation text shipped with slmops (public-domain prose and a little code)."""
    return resources.files("slmops.evaluate").joinpath("data/eval_text.txt").read_text(encoding="utf-8")


def eval_sentences() -> dict:
    """Queries, documents and the relevant document per query, shipped with slmops."""
    return json.loads(resources.files("slmops.evaluate").joinpath("data/sentences.json").read_text(encoding="utf-8"))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


GREEDY_PROMPTS = 4  # first queries of sentences.json continued greedily (information, not gated)
GREEDY_TOKENS = 16


def decoder_scores(model: TextModel, *, window: int = 512, max_tokens: int = 4096) -> dict[str, np.ndarray]:
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
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def decoder_metrics(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """Perplexity, its ratio to the reference, teacher-forced top-1 agreement, and (information)
    greedy-continuation agreement: the share of prompts continued identically and the mean share
    of the reference continuation's characters reproduced before the first difference."""
    ppl = float(np.exp(candidate["nll"].mean()))
    ref_ppl = float(np.exp(reference["nll"].mean()))
    pairs = list(zip(candidate["greedy"], reference["greedy"]))
    return {
        "greedy_exact": float(np.mean([a == b for a, b in pairs])),
        "greedy_prefix": float(np.mean([_common_prefix(a, b) / max(len(b), 1) for a, b in pairs])),
        "ppl": ppl,
        "ref_ppl": ref_ppl,
        "ppl_ratio": ppl / ref_ppl,
        "top1_agreement": float((candidate["argmax"] == reference["argmax"]).mean()),
        "eval_tokens": float(candidate["nll"].size),
    }


def embedding_outputs(model: EmbeddingModel) -> dict[str, np.ndarray]:
    data = eval_sentences()
    return {"queries": model.embed(data["queries"]), "documents": model.embed(data["documents"])}


def embedding_metrics(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray], *, top_k: int = 3) -> dict[str, float]:
    """Cosine to the reference embeddings (mean/min) and top-k retrieval agreement."""
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)

    cand = np.concatenate([candidate["queries"], candidate["documents"]])
    ref = np.concatenate([reference["queries"], reference["documents"]])
    cos = (unit(cand) * unit(ref)).sum(axis=1)
    def topk(out: dict[str, np.ndarray]) -> np.ndarray:
        sims = unit(out["queries"]) @ unit(out["documents"]).T
        return np.argsort(-sims, axis=1, kind="stable")[:, :top_k]

    agree = np.mean([len(set(a) & set(b)) / top_k for a, b in zip(topk(candidate), topk(reference))])
    relevant = np.asarray(eval_sentences()["relevant"])
    hits = float(np.mean(topk(candidate)[:, 0] == relevant))
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "topk_agreement": float(agree), "top1_hit_rate": hits}


def rerank_outputs(model: RerankModel) -> dict[str, np.ndarray]:
    data = eval_sentences()
    return {"scores": np.concatenate([model.scores(q, data["documents"]) for q in data["queries"]])}


def rerank_metrics(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """Spearman rank correlation of the candidate's scores with the reference's."""
    def ranks(x: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)

    a, b = ranks(candidate["scores"]), ranks(reference["scores"])
    rho = float(np.corrcoef(a, b)[0, 1]) if a.std() and b.std() else 1.0
    return {"spearman": rho}


def masked_sentences(mask_token: str, *, every: int = 3) -> list[str]:
    """The shipped documents with one word masked at a time: every ``every``-th purely alphabetic word."""
    out = []
    for doc in eval_sentences()["documents"]:
        words = doc.split()
        candidates = [i for i, w in enumerate(words) if w.isalpha()]
        for i in candidates[::every]:
            out.append(" ".join(mask_token if j == i else w for j, w in enumerate(words)))
    return out


def fill_mask_outputs(model: FillMaskModel) -> dict[str, np.ndarray]:
    """The 5 most likely token ids (best first) at the mask of every masked sentence."""
    logits = np.concatenate([lg for _, lg in model.mask_logits(masked_sentences(model.mask_token))])
    return {"top5": np.argsort(-logits, axis=-1, kind="stable")[:, :5]}


def fill_mask_metrics(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """Top-1 agreement and top-5 overlap of the masked-token predictions with the reference's."""
    cand, ref = candidate["top5"], reference["top5"]
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(cand, ref)])
    return {"top1_agreement": float((cand[:, 0] == ref[:, 0]).mean()), "top5_overlap": float(overlap),
            "masks": float(len(ref))}


# task -> (outputs of one model, metrics of candidate vs reference)
TASK_METRICS = {
    "causal-lm": (decoder_scores, decoder_metrics),
    "sentence-embedding": (embedding_outputs, embedding_metrics),
    "cross-encoder": (rerank_outputs, rerank_metrics),
    "fill-mask": (fill_mask_outputs, fill_mask_metrics),
}
