"""Causal LM runtime: optimum's decoder-with-past graph, a token loop, text streaming with stop strings."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from slmops.errors import ContextLengthError, GenerationParamsError, ModelLoadError, UsageError
from slmops.runtime.base import LoadedModel
from slmops.runtime.card import ModelCard
from slmops.runtime.params import GenerationParams
from slmops.runtime.sampling import Sampler
from slmops.runtime.tokenizer import Tokenizer

_ORT_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# Prompt tokens per graph call in SharedKVDecoderGraph.prefill: bounds the prompt's logits buffer
# (SmolLM2: 128 x 49152 x 4 bytes = 25 MB) whatever the prompt's length. Each call reads all the weights
# again: rough A/B on a busy 2-core box, SmolLM2 gguf-q4, 512-token prompt, prefill CPU time: one call
# 4607 ms, chunks of 128 5026 (+9%), of 64 5484 (+19%; its peak RSS 16 MB lower). Prompts up to 128
# tokens run in one call, as before.
PREFILL_CHUNK = 128
# The genai export's extra input (slmops.export.exporters.keep_last_logits): how many of the last positions the
# LM head runs on (HF transformers' ``logits_to_keep``). A prompt needs only its last position's logits: the
# other 127 of a 128-token chunk cost SmolLM2 25 MB of logits and a fifth of the prefill's multiply-adds.
LOGITS_TO_KEEP = "logits_to_keep"


class OnnxDecoderGraph:
    """Feeds a decoder-with-past graph: optimum's ``text-generation-with-past`` export or the fused graph of
    onnxruntime-genai's builder (GroupQueryAttention, no position_ids). KV cache in, present KV out."""

    def __init__(self, session, card: ModelCard) -> None:
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.present_names = ["present." + n.removeprefix("past_key_values.") for n in self.past_names]
        self.output_names = ["logits", *self.present_names]
        # (kv_heads, head_dim) of each past input: layers may differ (OpenELM's layer-wise scaling). The builder
        # names the head dimension symbolically ("kv_cache_dim"): then take it from the model card.
        self.kv_shapes = [_kv_shape(inputs[n].shape, card) for n in self.past_names]
        self.kv_dtype = _ORT_FLOAT.get(inputs[self.past_names[0]].type, np.float32)
        self.has_position_ids = "position_ids" in inputs
        logits = next(o for o in session.get_outputs() if o.name == "logits")
        # the vocabulary size, when the graph states it, lets logits be written into a preallocated buffer
        self.vocab = logits.shape[-1] if isinstance(logits.shape[-1], int) and logits.type == "tensor(float)" else None
        self.keeps_logits = LOGITS_TO_KEEP in inputs  # graphs exported before it run the LM head on every position

    def empty_cache(self, batch: int = 1, capacity: int | None = None) -> list[np.ndarray]:
        """A zero-length cache (it grows by concatenation inside the graph; ``capacity`` is not needed)."""
        return [np.zeros((batch, heads, 0, dim), dtype=self.kv_dtype) for heads, dim in self.kv_shapes]

    def forward(
        self,
        ids: np.ndarray,
        cache: list[np.ndarray],
        *,
        attention_mask: np.ndarray | None = None,
        keep: int | None = None,
        borrow: bool = False,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Run ``ids`` (batch, seq) after ``cache``; returns logits (batch, seq, vocab) and the grown cache.

        ``attention_mask`` (batch, past + seq) marks left padding with zeros; positions then count real tokens only.
        ``keep`` and ``borrow`` are for :class:`SharedKVDecoderGraph`'s callers: this graph always returns every
        position's logits, fresh.
        """
        logits, *present = self.session.run(self.output_names, self.feed(ids, cache, attention_mask=attention_mask))
        return logits, present

    def feed(
        self, ids: np.ndarray, cache: list[np.ndarray], *, attention_mask: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """The inputs that run ``ids`` (batch, seq) after ``cache`` (``logits_to_keep`` aside: see ``keeps_logits``)."""
        past = cache[0].shape[2]
        batch, seq = ids.shape
        mask = np.ones((batch, past + seq), dtype=np.int64) if attention_mask is None else attention_mask
        feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        if self.has_position_ids:
            if attention_mask is None:
                positions = np.broadcast_to(np.arange(past, past + seq, dtype=np.int64), (batch, seq))
            else:  # a left pad takes position 0, as transformers does; the mask hides it anyway
                positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)[:, -seq:]
            feed["position_ids"] = np.ascontiguousarray(positions, dtype=np.int64)
        feed.update(zip(self.past_names, cache, strict=False))
        return feed

    def prefill(self, ids: np.ndarray, cache: Any) -> tuple[np.ndarray, Any]:
        """The last position's logits (batch, vocab) of ``ids`` run after ``cache``, and the grown cache."""
        logits, cache = self.forward(ids, cache)
        return logits[:, -1].copy(), cache

    def rewind(self, cache: list[np.ndarray], length: int) -> list[np.ndarray]:
        """The cache of its first ``length`` positions (rejected draft tokens dropped)."""
        return [c[:, :, :length] for c in cache]


def _kv_shape(shape: list, card: ModelCard) -> tuple[int, int]:
    """(kv_heads, head_dim) of one past input [batch, kv_heads, past, head_dim]; symbolic dims from the model card."""
    heads = shape[1] if isinstance(shape[1], int) else card.kv_heads
    dim = shape[3] if isinstance(shape[3], int) else card.head_dim
    if heads is None or dim is None:
        raise ModelLoadError(
            f"the graph's KV input shape {shape} is symbolic and slmops-model.json gives kv_heads={card.kv_heads}, "
            f"head_dim={card.head_dim}; re-run `slmops export`"
        )
    return heads, dim


class SharedKVCache:
    """One preallocated [batch, kv_heads, capacity, head_dim] OrtValue per past/present pair, and how much is filled."""

    def __init__(self, buffers: list, capacity: int, length: int = 0) -> None:
        self.buffers, self.capacity, self.length = buffers, capacity, length
        self.binding = None  # the session's IOBinding with the KV buffers bound once, reused every step
        self.step_logits: np.ndarray | None = None  # the decode step's logits buffer, bound in place


class SharedKVDecoderGraph(OnnxDecoderGraph):
    """The builder's GroupQueryAttention graph with IO binding: each layer's KV buffer is bound as both past
    input and present output, so nothing is reallocated or copied per token.

    Measured on SmolLM2-135M wo-int8 / wo-int4 (2 threads, 128-token prompt): 57-62 / 71-75 tok/s against
    52 / 52 when feeding numpy arrays (OnnxDecoderGraph) and 66 / 80-86 for onnxruntime-genai's own Generator.
    """

    def empty_cache(self, batch: int = 1, capacity: int | None = None) -> SharedKVCache:  # type: ignore[override]  # same protocol, its own cache type
        import onnxruntime as ort

        if capacity is None:
            raise UsageError("SharedKVDecoderGraph.empty_cache needs capacity= (prompt + new tokens)")
        buffers = [
            ort.OrtValue.ortvalue_from_numpy(np.zeros((batch, heads, capacity, dim), dtype=self.kv_dtype))
            for heads, dim in self.kv_shapes
        ]
        return SharedKVCache(buffers, capacity)

    def prefill(self, ids: np.ndarray, cache: SharedKVCache) -> tuple[np.ndarray, SharedKVCache]:
        """As :meth:`OnnxDecoderGraph.prefill`, feeding ``PREFILL_CHUNK`` tokens per graph call.
        GroupQueryAttention appends each chunk to the bound KV buffers, so the logits equal one call's (bit for
        bit on SmolLM2 gguf-q4). A graph with ``logits_to_keep`` runs its LM head on each chunk's last position
        only; an older one writes every position's logits (vocab x 4 bytes each, 25 MB for 128 SmolLM2 tokens)
        into one reused buffer."""
        buffer = None
        keep = 1 if self.keeps_logits else None
        for start in range(0, ids.shape[1], PREFILL_CHUNK):
            logits, cache = self.forward(ids[:, start : start + PREFILL_CHUNK], cache, out=buffer, keep=keep)
            buffer = logits if buffer is None else buffer
        return logits[:, -1].copy(), cache

    def rewind(self, cache: SharedKVCache, length: int) -> SharedKVCache:  # type: ignore[override]  # its own cache type
        """As :meth:`OnnxDecoderGraph.rewind`: the positions past ``length`` are overwritten by the next call."""
        cache.length = length
        return cache

    def forward(  # type: ignore[override]  # takes and returns the shared cache it made
        self,
        ids: np.ndarray,
        cache: SharedKVCache,
        *,
        attention_mask: np.ndarray | None = None,
        out: np.ndarray | None = None,
        keep: int | None = None,
        borrow: bool = False,
    ) -> tuple[np.ndarray, SharedKVCache]:
        """As :meth:`OnnxDecoderGraph.forward`, but a mask means *right* padding: the graph turns it into
        ``seqlens_k = mask.sum(1) - 1`` and ``total_sequence_length = mask.shape[1]``, and GroupQueryAttention
        writes each row's new keys at its own ``seqlens_k`` (see :mod:`slmops.runtime.batch`).

        ``out``: a float32 buffer at least as large as the logits, written in place (its start, reshaped).
        ``keep``: logits for the last ``keep`` positions only (graphs with ``logits_to_keep``); None: every one.
        ``borrow``: a single-token step returns the cache's reused logits buffer itself, valid until the next call,
        instead of a copy (the copy of SmolLM2's 49k logits, into fresh pages, cost 0.25 of a 14 ms step).
        """
        batch, seq = ids.shape
        total = cache.length + seq if attention_mask is None else attention_mask.shape[1]
        if total > cache.capacity:
            raise ContextLengthError(
                f"the KV cache of {cache.capacity} tokens cannot hold {total}; size it to the request"
            )
        mask = np.ones((batch, total), dtype=np.int64) if attention_mask is None else attention_mask
        io = cache.binding
        if io is None:  # bind the KV buffers once per cache: rebinding 2 x layers values per token cost ~0.5 ms
            io = cache.binding = self.session.io_binding()
            for past, present, buf in zip(self.past_names, self.present_names, cache.buffers, strict=False):
                io.bind_ortvalue_input(past, buf)
                io.bind_ortvalue_output(present, buf)
        io.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64))
        io.bind_cpu_input("attention_mask", np.ascontiguousarray(mask, dtype=np.int64))
        kept = seq if keep is None or not self.keeps_logits else min(keep, seq)
        if self.keeps_logits:
            io.bind_cpu_input(LOGITS_TO_KEEP, np.asarray([kept], dtype=np.int64))
        if self.vocab is None:
            io.bind_output("logits", "cpu")
            self.session.run_with_iobinding(io)
            cache.length = total
            return io.get_outputs()[-1].numpy(), cache  # logits was bound last
        # logits straight into a numpy buffer (get_outputs() would wrap every present value too); one
        # buffer is reused for the single-token steps, and the caller gets a copy it may keep
        shape = (batch, kept, self.vocab)
        logits = cache.step_logits
        if out is not None and out.size >= batch * kept * self.vocab:
            logits = out.reshape(-1)[: batch * kept * self.vocab].reshape(shape)
        elif kept != 1 or logits is None or logits.shape != shape:
            logits = np.empty(shape, dtype=np.float32)
        io.bind_output("logits", "cpu", 0, np.float32, list(shape), logits.ctypes.data)
        self.session.run_with_iobinding(io)
        cache.length = total
        if seq == 1 and out is None:
            cache.step_logits = logits
            return (logits if borrow else logits.copy()), cache
        return logits, cache


GRAPHS = {"optimum-decoder": OnnxDecoderGraph, "genai-decoder": SharedKVDecoderGraph}


class TextModel(LoadedModel):
    """Generation and chat over a causal-LM artifact folder."""

    def __init__(self, folder: Path, card: ModelCard, session, *, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(folder, card)
        self.tokenizer = tokenizer or Tokenizer(folder)
        self.graph = GRAPHS[card.graph](session, card)

    def _release(self) -> None:
        self.graph = None  # type: ignore[assignment]  # unloaded: _require_loaded() guards every use

    # -- scoring ---------------------------------------------------------------------------------
    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits (seq, vocab) for a token sequence, in one forward pass (used by the quality gates)."""
        self._require_loaded()
        logits, _ = self.graph.forward(np.asarray([ids], dtype=np.int64), self.graph.empty_cache(capacity=len(ids)))
        return logits[0]

    # -- generation ------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str | None = None, messages: list[dict[str, str]] | None = None) -> list[int]:
        """Token ids for a plain prompt or for chat messages rendered with the model's template."""
        if (prompt is None) == (messages is None):
            raise GenerationParamsError("pass exactly one of prompt= or messages=")
        if messages is not None:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        else:
            if not isinstance(prompt, str) or not prompt:
                raise GenerationParamsError(f"prompt={prompt!r} must be a non-empty string")
            text = prompt
        return self.tokenizer.encode(text, add_special_tokens=True)

    def _fit_context(self, ids: list[int], params: GenerationParams) -> list[int]:
        limit = self.card.context_length
        if params.max_tokens >= limit:
            raise ContextLengthError(f"max_tokens={params.max_tokens} must be below the context length {limit}")
        if len(ids) + params.max_tokens > limit:
            if not params.truncate:
                raise ContextLengthError(
                    f"prompt of {len(ids)} tokens + max_tokens={params.max_tokens} exceeds the context length "
                    f"{limit}; shorten the prompt, lower max_tokens, or pass truncate=True"
                )
            ids = ids[len(ids) + params.max_tokens - limit :]
        return ids

    def token_stream(self, ids: list[int], params: GenerationParams) -> Iterator[int]:
        """Yield generated token ids until an end token, a stop token or max_tokens."""
        self._require_loaded()
        ids = self._fit_context(ids, params)
        sampler = Sampler(params)
        end = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.card.eos_token_ids))
        seen = np.asarray(ids, dtype=np.int64)
        cache = self.graph.empty_cache(capacity=len(ids) + params.max_tokens)
        last, cache = self.graph.prefill(seen[None, :], cache)
        if params.prompt_lookup_tokens:
            yield from self._drafted_tokens(seen, cache, sampler(last[0], seen), sampler, end, params)
            return
        for step in range(params.max_tokens):
            token = sampler(last[0], seen)
            if token in end:
                return
            yield token
            if step + 1 == params.max_tokens:
                return
            seen = np.append(seen, token)
            # borrowed: the sampler reads the logits before the next step overwrites them
            logits, cache = self.graph.forward(np.asarray([[token]], dtype=np.int64), cache, borrow=True)
            last = logits[:, -1]

    def _drafted_tokens(
        self, seen: np.ndarray, cache: Any, token: int, sampler: Sampler, end: set[int], params: GenerationParams
    ) -> Iterator[int]:
        """:meth:`token_stream` after the prompt pass, with prompt-lookup drafts (greedy, so ``sampler`` is a
        function of the logits and the tokens seen). Each step feeds the token just chosen plus the tokens that
        followed the latest earlier occurrence of the last tokens (as many as :class:`DraftSizer` judges worth
        their cost); the drafts are accepted while they equal what the sampler picks from the logits of the
        position before them, and the first pick that differs is the next token. So the tokens are the greedy
        ones, in fewer graph calls when drafts hit."""
        kind = "float" if self.card.precision in ("fp32", "fp16") else "quantized"
        sizer = DraftSizer(params.prompt_lookup_tokens, DRAFT_TOKEN_COST[kind])
        produced = 0
        while True:
            if token in end:
                return
            yield token
            produced += 1
            if produced == params.max_tokens:
                return
            seen = np.append(seen, token)
            # drafts beyond max_tokens would never be yielded (and the cache holds prompt + max_tokens positions)
            draft = lookup_draft(seen, min(sizer.size(), params.max_tokens - produced - 1))
            feed = np.asarray([[token, *draft]], dtype=np.int64)
            logits, cache = self.graph.forward(feed, cache, keep=feed.shape[1], borrow=True)
            token = sampler(logits[0, 0], seen)
            accepted = 0
            for i, drafted in enumerate(draft, start=1):
                if token != drafted:
                    break
                if token in end:
                    return
                yield token
                produced += 1
                accepted += 1
                if produced == params.max_tokens:
                    return
                seen = np.append(seen, token)
                token = sampler(logits[0, i], seen)
            sizer.observe(len(draft), accepted)
            cache = self.graph.rewind(cache, len(seen))  # the fed positions whose tokens were accepted

    def stream(
        self, prompt: str | None = None, *, messages: list[dict[str, str]] | None = None, **options: Any
    ) -> Iterator[str]:
        """Yield text deltas. Joined, they equal :meth:`generate`'s result for the same options and seed."""
        self._require_loaded()
        return self.completion(self.prompt_ids(prompt, messages), **options)

    def completion(self, ids: list[int], **options: Any) -> Completion:
        """The text deltas of a completion of the token ids ``ids`` (see :meth:`prompt_ids`), as a
        :class:`Completion` that also tells, once exhausted, why it ended and how many tokens it used.

        Options as for :meth:`generate`. Raises GenerationParamsError / ContextLengthError now, not mid-stream.
        """
        self._require_loaded()
        params = _params(options)
        ids = self._fit_context(ids, params)
        return Completion(self.tokenizer, self.token_stream(ids, params), params, prompt_tokens=len(ids))

    def generate(
        self, prompt: str | None = None, *, messages: list[dict[str, str]] | None = None, **options: Any
    ) -> str:
        """Generate a completion for ``prompt`` or a reply to chat ``messages``.

        Options are :class:`GenerationParams` fields (max_tokens, temperature, top_k, top_p,
        repetition_penalty, stop, stop_token_ids, seed, truncate). Raises GenerationParamsError.
        """
        return "".join(self.stream(prompt, messages=messages, **options))

    def warm_up(self) -> None:
        self.generate("Hello", max_tokens=1, temperature=0.0)

    def chat(self, messages: list[dict[str, str]], **options: Any) -> str:
        """The assistant's reply to ``messages``."""
        return self.generate(messages=messages, **options)

    def generate_batch(self, prompts: list[str], *, batch_size: int = 16, **options: Any) -> list[str]:
        """Completions for several prompts with the same options, ``batch_size`` prompts per graph call.

        Each completion is the one :meth:`generate` gives for that prompt alone (greedy: the same
        text; with a seed: each prompt samples with its own generator seeded alike). Raises
        GenerationParamsError for an empty list, a bad prompt or option, ContextLengthError.
        """
        from slmops.runtime.batch import generate_token_batch

        self._require_loaded()
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
            raise GenerationParamsError(f"prompts={prompts!r} must be a non-empty list of strings")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise GenerationParamsError(f"batch_size={batch_size!r} must be a positive integer")
        params = _params(options)
        rows = [self._fit_context(self.prompt_ids(p), params) for p in prompts]  # all errors before any work
        texts: list[str] = []
        for start in range(0, len(rows), batch_size):
            for tokens in generate_token_batch(self, rows[start : start + batch_size], params):
                texts.append("".join(_text_deltas(self.tokenizer, iter(tokens), params.stop)))
        return texts


class Completion(Iterator[str]):
    """Text deltas of one generation (what :meth:`TextModel.stream` yields). Once exhausted it knows
    ``finish_reason``: ``"length"`` when max_tokens ended it, ``"stop"`` for an end token or a stop string;
    ``completion_tokens`` counts the tokens generated and ``token_ids`` holds them (a stop string's too)."""

    def __init__(self, tokenizer: Tokenizer, tokens: Iterator[int], params: GenerationParams, *, prompt_tokens: int):
        self.prompt_tokens = prompt_tokens
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self._max_tokens = params.max_tokens
        self._deltas = _text_deltas(tokenizer, self._counted(tokens), params.stop)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    def _counted(self, tokens: Iterator[int]) -> Iterator[int]:
        for token in tokens:
            self.token_ids.append(token)
            yield token
        # token_stream ends after max_tokens tokens, or earlier on an end token (which it does not yield)
        self.finish_reason = "length" if len(self.token_ids) >= self._max_tokens else "stop"

    def __next__(self) -> str:
        try:
            return next(self._deltas)
        except StopIteration:
            if self.finish_reason is None:  # the deltas stopped before the tokens: a stop string
                self.finish_reason = "stop"
            raise

    def close(self) -> None:
        """Stop generating (a client went away); closes the token loop."""
        self._deltas.close()


# What each drafted token adds to a graph call, in single-token steps (SmolLM2-135M, 2 threads, 2026-12-01, quiet
# machine, medians of 15 calls after a 200-token prompt). fp32, bound by reading the weights: a call on 1/2/4/8 tokens
# took 17.8/19.0/22.1/27.8 ms. gguf-q4 (MatMulNBits, int8 activations): 5.8/7.6/12.1/21.1 ms.
DRAFT_TOKEN_COST = {"float": 0.06, "quantized": 0.35}


class DraftSizer:
    """How many drafted tokens to feed: the number that maximizes the expected tokens per unit of graph time,
    ``(1 + p + p^2 + ... + p^k) / (1 + token_cost * k)``, from ``p``, a running estimate of the chance that
    a drafted token is accepted (``token_cost``: :data:`DRAFT_TOKEN_COST`). 0 (no draft) while ``p`` is at most
    the cost of a token; ``p`` then drifts back toward the prior so that drafting is tried again later (the text
    may start copying)."""

    def __init__(
        self, limit: int, token_cost: float, *, prior: float = 0.5, weight: float = 0.2, drift: float = 0.02
    ) -> None:
        self.limit, self.token_cost, self.prior, self.weight, self.drift = limit, token_cost, prior, weight, drift
        self.p = prior

    def size(self) -> int:
        best, best_gain, expected, chance = 0, 1.0, 1.0, 1.0
        for k in range(1, self.limit + 1):
            chance *= self.p
            expected += chance
            gain = expected / (1.0 + self.token_cost * k)
            if gain > best_gain:
                best, best_gain = k, gain
        return best

    def observe(self, drafted: int, accepted: int) -> None:
        """A step fed ``drafted`` tokens and ``accepted`` of them were the greedy ones (the first miss ends them)."""
        if drafted == 0:
            self.p += self.drift * (self.prior - self.p)
            return
        for hit in [1.0] * accepted + ([0.0] if accepted < drafted else []):
            self.p += self.weight * (hit - self.p)


def lookup_draft(seen: np.ndarray, size: int, *, longest: int = 3, shortest: int = 1) -> list[int]:
    """Up to ``size`` tokens that followed the latest earlier occurrence of the last ``n`` tokens of ``seen``, for the
    longest ``n <= longest`` that occurs (prompt-lookup decoding's drafts); [] when none does or ``size < 1``."""
    if size < 1:
        return []
    length = len(seen)
    for n in range(min(longest, length - 1), shortest - 1, -1):
        match = np.ones(length - n, dtype=bool)  # starts 0 .. length-n-1: every start before the tail's own
        for j in range(n):
            match &= seen[j : length - n + j] == seen[length - n + j]
        starts = np.flatnonzero(match)
        if starts.size:
            start = int(starts[-1]) + n
            return seen[start : start + size].tolist()
    return []


def _params(options: dict[str, Any]) -> GenerationParams:
    """``params=`` when given (a GenerationParams), else the keyword options validated into one."""
    given = options.pop("params", None)
    if given is None:
        return GenerationParams.build(**options)
    if not isinstance(given, GenerationParams) or options:
        raise GenerationParamsError("pass either params=GenerationParams(...) or keyword options, not both")
    return given


def _text_deltas(tokenizer: Tokenizer, tokens: Iterator[int], stops: tuple[str, ...]) -> Generator[str, None, None]:
    """Turn token ids into text deltas: never split a multi-byte character, never emit past a stop string."""
    deltas = TextDeltas(tokenizer, stops)
    for token in tokens:
        delta = deltas.push(token)
        if delta:
            yield delta
        if deltas.stopped:
            return
    tail = deltas.flush()
    if tail:
        yield tail


class TextDeltas:
    """Token ids pushed one at a time -> text deltas, as :meth:`TextModel.stream` yields them: never a split
    multi-byte character, never text past a stop string (``stopped`` tells that one was found)."""

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...]) -> None:
        self.tokenizer, self.stops = tokenizer, stops
        self.longest_stop = max((len(s) for s in stops), default=0)
        self.generated: list[int] = []
        self.emitted = 0
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """The text ``token`` completes ("" while a character or a possible stop string is incomplete)."""
        self.generated.append(token)
        text = self.text = self.tokenizer.decode(self.generated)
        if text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence; wait for its next byte
        cut = _find_stop(text, self.stops, start=max(0, self.emitted - self.longest_stop))
        if cut is not None:
            self.stopped = True
            delta = text[self.emitted : cut] if cut > self.emitted else ""
            self.emitted = len(text)
            return delta
        safe = len(text) - _held_back(text, self.stops)
        if safe > self.emitted:
            delta, self.emitted = text[self.emitted : safe], safe
            return delta
        return ""

    def flush(self) -> str:
        """What is left to say once the tokens end (text held back as a possible stop string's start)."""
        if self.stopped or len(self.text) <= self.emitted:
            return ""
        cut = _find_stop(self.text, self.stops, start=max(0, self.emitted - self.longest_stop))
        end = len(self.text) if cut is None else cut
        delta = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = len(self.text)
        return delta


def _find_stop(text: str, stops: tuple[str, ...], *, start: int) -> int | None:
    hits = [i for s in stops if (i := text.find(s, start)) != -1]
    return min(hits) if hits else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
