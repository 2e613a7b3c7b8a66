"""Prompt-lookup drafts (``prompt_lookup_tokens``) beside plain greedy decoding, task by task.

    python benchmarks/lookup.py                       # artifacts/candidates/smollm2-135m-instruct/gguf-q4
    python benchmarks/lookup.py FOLDER --rounds 5 --drafts 3 6 --max-tokens 128

One process, one model: each round runs every task plainly and with each draft size, alternating, so the
machine's drift hits all rows alike; a round taken while other processes used the CPU (benchmarks/quiet.py) is
repeated or, after a retry, flagged and left out of the medians. Per task: tokens generated (greedy, until an end
token or ``--max-tokens``), ms per token plain and drafted, the speed-up (plain time / drafted time per token,
median and range over rounds), graph calls per token, and where the drafted tokens first differ from the plain
ones ("=" when they never do). Times and calls count the decode only, after the first token (the prompt pass
is the same with or without drafts); where the tokens differ, so do the texts being timed. On fp32 graphs they do not differ; where MatMulNBits quantizes activations
(accuracy level 4), a call on several tokens and a call on one compute slightly different logits, so a near-tie
can go the other way (and the prompt pass, a call on many tokens, is computed like the drafted calls).
Writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import quiet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
THREADS = 2

TEXT = (
    "The Amazon rainforest covers much of the Amazon basin of South America. This basin encompasses seven million "
    "square kilometres, of which five and a half million square kilometres are covered by the rainforest. The "
    "region includes territory belonging to nine nations and 3,344 formally acknowledged indigenous territories."
)
CODE = "def total(items):\n    x = 0\n    for item in items:\n        x += item.price * item.quantity\n    return x\n"
TASKS = {
    "copy text": f"Repeat the following text exactly:\n\n{TEXT}",
    "edit code": f"Rename the variable x to subtotal in this code and show the whole code:\n\n{CODE}",
    "answer from context": f"{TEXT}\n\nHow many square kilometres does the basin encompass? Answer with a quote.",
    "summarize": f"Summarize in one sentence:\n\n{TEXT}",
    "open chat": "What is the capital of France? Tell me about it.",
}


def run_task(model, ids: list[int], drafts: int, max_tokens: int) -> dict:
    from slmops.runtime.params import GenerationParams

    calls = 0
    forward = model.graph.forward

    def counted(fed, cache, **kwargs):
        nonlocal calls
        calls += 1
        return forward(fed, cache, **kwargs)

    model.graph.forward = counted
    try:
        params = GenerationParams(max_tokens=max_tokens, temperature=0.0, prompt_lookup_tokens=drafts)
        stream = model.token_stream(ids, params)
        start = time.perf_counter()
        tokens = [next(stream)]  # the prompt pass: the same for both, left out of the decode time
        first = time.perf_counter()
        tokens += list(stream)
        seconds = time.perf_counter() - first
    finally:
        model.graph.forward = forward
    # decode time per token after the first; the calls after the prompt pass's
    return {"tokens": tokens, "seconds": seconds, "ttft": first - start, "calls": calls - 1, "per": len(tokens) - 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folder", nargs="?", type=Path, default=ROOT / "artifacts/candidates/smollm2-135m-instruct/gguf-q4"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every task and draft size (default 5)")
    parser.add_argument("--drafts", type=int, nargs="+", default=[3, 6], help="draft sizes to run (default 3 6)")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    if not (args.folder / "slmops-model.json").is_file():
        parser.error(f"{args.folder} is not a candidate folder; run `make run` first or pass a folder")
    if args.rounds < 1 or any(d < 1 or d > 16 for d in args.drafts):
        parser.error(f"--rounds {args.rounds} must be >= 1 and --drafts {args.drafts} each 1..16")
    from slmops.runtime.open import open_folder

    model = open_folder(args.folder, threads=THREADS, optimized_dir=Path.home() / ".cache/slmops/optimized")
    prompts = {task: model.prompt_ids(messages=[{"role": "user", "content": text}]) for task, text in TASKS.items()}
    sizes = [0, *args.drafts]
    for ids in prompts.values():  # warm up: first calls of each shape allocate
        run_task(model, ids, max(sizes), 8)
    # the 1-minute load counts this process's own previous round: a round is judged by the others' CPU share and
    # the steal in the samples around it
    limits = quiet.Limits(max_load=float("inf"), max_busy_pct=20.0, max_steal_pct=5.0)
    rounds: list[dict] = []
    while len([r for r in rounds if not r["busy"]]) < args.rounds and len(rounds) < 2 * args.rounds:
        before = quiet.sample(1.0)
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        runs = {task: {k: run_task(model, ids, k, args.max_tokens) for k in sizes} for task, ids in prompts.items()}
        own = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
        after = quiet.sample(0.5)
        busy = limits.why_busy(before) is not None or limits.why_busy(after) is not None
        rounds.append(
            {"busy": busy, "before": before.as_dict(), "after": after.as_dict(), "own_cpu": own, "runs": runs}
        )
        print(
            f"round {len(rounds)}: load {before.load1:.2f}, others' CPU {before.busy_pct:.0f}%"
            f"{' (busy: left out)' if busy else ''}",
            flush=True,
        )
    kept = [r for r in rounds if not r["busy"]]
    flagged = "" if kept else " (every round was busy: the medians are over all of them)"
    kept = kept or rounds
    print(
        f"\n{args.folder.parent.name}/{args.folder.name}, {THREADS} threads, greedy, {len(kept)} quiet rounds of "
        f"{len(rounds)}{flagged}; speed-up = plain ms/token / drafted ms/token, median (range)"
    )
    header = f"{'task':22s} {'tokens':>6s} {'plain ms/tok':>12s}"
    for k in args.drafts:
        header += f" | {'k=' + str(k) + ' ms/tok':>11s} {'speed-up':>18s} {'calls/tok':>9s} {'differs':>7s}"
    print(header)
    summary: dict[str, dict] = {}
    for task in TASKS:
        plain = [r["runs"][task][0] for r in kept]
        n = len(plain[0]["tokens"])
        per = [p["seconds"] * 1000 / max(p["per"], 1) for p in plain]
        line = f"{task:22s} {n:6d} {statistics.median(per):12.1f}"
        summary[task] = {"tokens": n, "plain_ms_per_token": per}
        for k in args.drafts:
            runs = [r["runs"][task][k] for r in kept]
            ms = [x["seconds"] * 1000 / max(x["per"], 1) for x in runs]
            ratios = [a / b for a, b in zip(per, ms, strict=True)]
            first = runs[0]["tokens"]
            pairs = zip(first, plain[0]["tokens"], strict=False)
            diverge = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
            if diverge is None and len(first) != n:
                diverge = min(len(first), n)
            calls = statistics.median(x["calls"] / max(x["per"], 1) for x in runs)
            line += (
                f" | {statistics.median(ms):11.1f} {statistics.median(ratios):5.2f}x ({min(ratios):.2f}-"
                f"{max(ratios):.2f}) {calls:9.2f} {'=' if diverge is None else diverge:>7}"
            )
            summary[task][f"k={k}"] = {
                "ms_per_token": ms,
                "speedup": ratios,
                "calls_per_token": calls,
                "first_difference": diverge,
            }
        print(line)
    out = ROOT / "benchmarks/results" / f"lookup-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"folder": str(args.folder), "rounds": rounds, "summary": summary}, default=str))
    print(f"\nwritten {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
