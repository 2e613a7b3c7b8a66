"""Does a greedy answer depend on how many requests decode beside it? Per causal-lm candidate, in one run:

    python benchmarks/batch_agreement.py                  # after `make run`: every causal-lm candidate built
    python benchmarks/batch_agreement.py --prompts 24 --tokens 48 artifacts/candidates/smollm2-135m-instruct/gguf-q4

For each candidate folder it prints:

* **texts equal**: greedy completions of N chat prompts decoded alone (one row per graph call, as a lone
  request is) against the same prompts decoded together (several rows per call, as under concurrent load
  in ``slmops serve``), and, over the completions that differ, the mean index of the first differing token;
* **logits M=1 vs M>=2**: the largest absolute logit difference between one row decoded alone and the same
  row decoded beside copies of itself (2 rows), over the first decode steps; and between 2 and 8 rows;
* **PPL decode M=1 / M=2**: perplexity of the evaluation text decoded token by token (teacher forcing) as a
  single row and as two rows, beside the one-pass prompt PPL the quality gate measures.

It answers the serving issue's question of whether greedy outputs under concurrency equal the same
requests alone, with the measured agreement where they cannot be equal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Hello",
    "What is the capital of France?",
    "Write a haiku about rust.",
    "Explain photosynthesis briefly.",
    "List three colors.",
    "Who wrote Hamlet?",
    "Translate 'good morning' to Spanish.",
    "What is 17 times 3?",
    "Give me a tip for learning to code.",
    "Why is the sky blue?",
    "Name a planet with rings.",
    "Describe a cat in one sentence.",
    "What does a compiler do?",
    "Suggest a name for a bakery.",
    "How many legs does a spider have?",
    "Summarize the plot of Cinderella.",
    "What is the boiling point of water?",
    "Write a short poem about the sea.",
    "What is machine learning?",
    "Recommend a book for a long flight.",
    "How do I make tea?",
    "What is the largest ocean?",
    "Tell me a fun fact about octopuses.",
    "What is the square root of 144?",
]


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def texts_agreement(model, prompts: list[str], tokens: int, batch: int) -> tuple[int, float | None]:
    from slmops.runtime.batch import generate_token_batch
    from slmops.runtime.params import GenerationParams

    params = GenerationParams.build(max_tokens=tokens, temperature=0.0)
    rows = [model.prompt_ids(messages=[{"role": "user", "content": p}]) for p in prompts]
    alone = [list(model.token_stream(r, params)) for r in rows]
    together: list[list[int]] = []
    for start in range(0, len(rows), batch):
        together += generate_token_batch(model, rows[start : start + batch], params)
    same = sum(a == b for a, b in zip(alone, together, strict=True))
    splits = [first_difference(a, b) for a, b in zip(alone, together, strict=True) if a != b]
    return same, float(np.mean(splits)) if splits else None


def decode_logits(model, ids: list[int], copies: int, steps: int) -> list[np.ndarray]:
    """Row 0's logits for the prompt and ``steps`` greedy steps, the row decoded beside ``copies - 1`` copies."""
    from slmops.runtime.batch import PADDING

    runner = PADDING[model.card.graph](model.graph, [ids] * copies, pad_id=0, capacity=len(ids) + steps + 1)
    out = [runner.logits[0].copy()]
    token = int(np.argmax(out[-1]))
    for _ in range(steps):
        out.append(runner.step(np.full(copies, token, dtype=np.int64))[0].copy())
        token = int(np.argmax(out[-1]))
    return out


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a[1:], b[1:], strict=True))  # decode steps only


def nll(logits: np.ndarray, target: int) -> float:
    shifted = logits - logits.max()
    return float(np.log(np.exp(shifted).sum()) - shifted[target])


def decode_ppl(model, ids: list[int], copies: int) -> float:
    from slmops.runtime.batch import PADDING

    runner = PADDING[model.card.graph](model.graph, [ids[:1]] * copies, pad_id=0, capacity=len(ids) + 1)
    logits, total = runner.logits[0], 0.0
    for token in ids[1:]:
        total += nll(logits, token)
        logits = runner.step(np.full(copies, token, dtype=np.int64))[0]
    return float(np.exp(total / (len(ids) - 1)))


def prompt_ppl(model, ids: list[int]) -> float:
    logits = model.logits(ids)
    return float(np.exp(np.mean([nll(logits[i], t) for i, t in enumerate(ids[1:])])))


def measure(folder: Path, args: argparse.Namespace) -> dict[str, float | str]:
    from slmops.runtime.open import open_folder

    model = open_folder(folder, threads=args.threads)
    same, prefix = texts_agreement(model, PROMPTS[: args.prompts], args.tokens, args.batch)
    ids = model.prompt_ids("The history of the printing press")
    one, two, eight = (decode_logits(model, ids, k, args.steps) for k in (1, 2, 8))
    text = (ROOT / "slmops" / "taskdefs" / "data" / "eval_text.txt").read_text()
    eval_ids = model.tokenizer.encode(text)[: args.ppl_tokens]
    return {
        "candidate": f"{folder.parent.name}/{folder.name}",
        "texts equal": f"{same}/{min(args.prompts, len(PROMPTS))}",
        "differ from token": "-" if prefix is None else round(prefix, 1),
        "logits M1 vs M2": max_difference(one, two),
        "logits M2 vs M8": max_difference(two, eight),
        "PPL prompt": prompt_ppl(model, eval_ids),
        "PPL decode M=1": decode_ppl(model, eval_ids, 1),
        "PPL decode M=2": decode_ppl(model, eval_ids, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, help="candidate folders (default: every causal-lm one)")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="chat prompts to decode (at most 24)")
    parser.add_argument("--tokens", type=int, default=48, help="greedy tokens per prompt")
    parser.add_argument("--batch", type=int, default=8, help="rows per graph call when decoding together")
    parser.add_argument("--steps", type=int, default=8, help="decode steps compared at the logits level")
    parser.add_argument("--ppl-tokens", type=int, default=256, help="evaluation-text tokens for the decode PPL")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    folders = args.folders or sorted(
        f.parent
        for f in (ROOT / "artifacts" / "candidates").glob("*/*/slmops-model.json")
        if '"causal-lm"' in f.read_text()
    )
    if not folders:
        print("no causal-lm candidates: run `make run` first, or name candidate folders", file=sys.stderr)
        return 2
    rows = []
    for folder in folders:
        print(f"measuring {folder} ...", flush=True)
        rows.append(measure(folder, args))
    columns = list(rows[0])
    print("  ".join(f"{c:>18}" if i else f"{c:<34}" for i, c in enumerate(columns)))
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
        print("  ".join(f"{c:>18}" if i else f"{c:<34}" for i, c in enumerate(cells)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
