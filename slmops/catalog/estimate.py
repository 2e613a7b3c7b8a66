"""Human-readable sizes, memory estimates and device compatibility (the seed's utilities).

The estimate is weights + KV cache + activations + runtime and tokenizer overhead. Bytes per weight and
which devices run which precision are data (``PRECISIONS``), not branches.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from slmops.catalog.schema import Variant
from slmops.errors import ConfigError
from slmops.runtime.base import RUNTIME_OVERHEAD_BYTES
from slmops.tasks import get_task

Precision = Literal["fp32", "fp16", "int8", "int4"]


@dataclass(frozen=True)
class PrecisionSpec:
    """Storage cost of one weight and where the precision runs."""

    weight_bytes: float  # bytes per quantized weight, scales and zero points included
    embedding_bytes: float  # bytes per embedding weight (weight-only quantizers leave Gather fp32)
    kv_bytes: int  # bytes per KV-cache element
    devices: tuple[str, ...]
    decoder_prepacked: bool = False  # MatMulNBits prepacks its weights (GRAPH_LAYOUTS' prepack_factor applies)


# Weight-only MatMulNBits stores one fp32 scale per block and, asymmetric, a packed zero point: int8 is wo-int8's
# blocks of 128 (+4/128 + 1/128 byte; the prepacked copy adds MLAS's per-block sum instead of the zero point),
# int4 gguf-q4's blocks of 32. Quantized decoders use MatMulNBits (prepacked at load); quantized encoders use
# dynamic int8 (MatMulInteger, no extra copy).
PRECISIONS: dict[str, PrecisionSpec] = {
    "fp32": PrecisionSpec(4.0, 4.0, 4, ("cpu", "cuda")),
    "fp16": PrecisionSpec(2.0, 2.0, 2, ("cuda",)),
    "int8": PrecisionSpec(1.0 + 4 / 128 + 1 / 128, 4.0, 4, ("cpu", "cuda"), decoder_prepacked=True),
    "int4": PrecisionSpec(0.5 + 4 / 32 + 0.5 / 32, 4.0, 4, ("cpu", "cuda"), decoder_prepacked=True),
}


# Calibrated with benchmarks/memory.py (peak RSS, VmHWM) on SmolLM2-135M-Instruct's genai candidates
# (fp32, wo-int8, gguf-q4) and all-MiniLM-L6-v2 (fp32, dyn-int8-pc), onnxruntime 1.32, 2 threads, opened as
# slmops.load opens them (the optimized-graph cache, weights in a memory-mapped external file): every
# estimate within 10% (tests/unit/test_estimate.py holds the measurements).
@dataclass(frozen=True)
class GraphLayout:
    """How an exporter lays out a decoder's weights, as onnxruntime ends up holding them."""

    tied_lm_head_fp32_copy: bool  # a tied lm_head becomes its own fp32 initializer, never quantized
    prepack_factor: float  # resident copies of MatMul(NBits) weights: the prepacked copy replaces the mapped file
    chunked_prefill: bool  # the runtime feeds the prompt PREFILL_CHUNK tokens per call (logits of a chunk only)
    last_logits_only: bool  # the graph's logits_to_keep: a prefill call writes its last position's logits only
    quantized_embedding: bool = False  # quantized recipes turn the token embedding into a GatherBlockQuantized table


# optimum: lm_head = MatMul(x, Transpose(embed)), folded to an fp32 copy that the quantizers skip.
# genai (onnxruntime-genai builder, shared_embeddings=false): lm_head is a separate weight, quantized, and so is
# the token embedding (GatherBlockQuantized: 27 MB of SmolLM2's table instead of 108).
# (optimum's factors follow the same mapping; its graphs were last measured before the mapped cache.)
GRAPH_LAYOUTS: dict[str, GraphLayout] = {
    "optimum": GraphLayout(
        tied_lm_head_fp32_copy=True, prepack_factor=1.0, chunked_prefill=False, last_logits_only=False
    ),
    "genai": GraphLayout(
        tied_lm_head_fp32_copy=False,
        prepack_factor=1.0,
        chunked_prefill=True,
        last_logits_only=True,
        quantized_embedding=True,
    ),
}
ARENA_FACTOR = 1.5  # onnxruntime's arena grows by doubling: activations cost ~1.5x their size
# The embedding table stays in the mapped file, read a page per row (slmops.runtime.pages.read_sparsely): a request
# keeps at most one page resident per position it gathers (SmolLM2, 192 positions: 0.3 MB of a 27 MB table).
EMBEDDING_PAGE_BYTES = 4096
# A decoder's first request, whatever its length, per vocabulary entry: onnxruntime's per-run buffers and the
# code and mapped weights it touches, beyond the logits (SmolLM2's 49152 entries: about 23 MB; the tiny test
# Llama's: next to nothing). Calibrated, like the rest, on the measurements in test_estimate.py (2026-12-01 21:00,
# after the embedding went to a page per row: 1000 -> 500).
DECODER_FIRST_RUN_BYTES_PER_ENTRY = 500
# An encoder's first batch beyond its activations: onnxruntime's code pages and per-run buffers it touches
# (all-MiniLM-L6-v2 at batch 32 of 15 tokens, benchmarks/memory.py: the first batch adds 12.8 MB int8 and 15.6 fp32
# against 5.3 MB of activations with the arena's factor). Calibrated on test_estimate.py's rows of two machines.
ENCODER_FIRST_RUN_BYTES = 8 * 2**20
# HF tokenizers in memory, per vocabulary entry: byte-level BPE (vocab + merges; SmolLM2's 49152: 29.5 MB) and
# WordPiece (MiniLM's 30522: 8.9 MB), read before the session (benchmarks/memory.py, 2026-12-01)
TOKENIZER_BYTES_PER_ENTRY = {"bpe": 630, "wordpiece": 305}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed to run a variant; ``total`` is what a memory budget is checked against."""

    weights: int
    kv_cache: int
    activations: int
    overhead: int  # the runtime's (RUNTIME_OVERHEAD_BYTES) and the tokenizer's

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.overhead


def precision_spec(precision: str) -> PrecisionSpec:
    """The spec for a precision name; raises ConfigError naming the known ones."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}") from None


def estimate_memory(
    variant: Variant,
    *,
    precision: str = "fp32",
    context_length: int | None = None,
    batch: int = 1,
    prompt_tokens: int | None = None,
    graph: str = "optimum",
    weight_bytes: float | None = None,
) -> MemoryEstimate:
    """Estimate peak memory for ``batch`` sequences of ``context_length`` tokens at ``precision``.

    ``weight_bytes``: a built candidate's bytes per quantized MatMul weight (``slmops.quantize.footprint``), in
    place of the precision's nominal one: recipes mixing bit widths (wo-int8-gptq4: 0.88 bytes, labelled int8)
    and GGUF blocks (gguf-q4: 0.74 with its 8-bit head, labelled int4) sit between the nominal widths.

    Decoders: weights (each MatMul weight once, as its prepacked copy; a tied lm_head becomes its own fp32
    copy in optimum's graph; the embedding table mapped, partly resident) + fp32 KV cache + the prefill of
    ``prompt_tokens`` (default: min(context, 512)), whose logits cover its last position (genai graphs, fed
    PREFILL_CHUNK tokens per call) or every position (optimum). Encoders: weights + activations of one batch. Overhead:
    the runtime's plus the tokenizer's. ``graph`` is the exporter's layout (``GRAPH_LAYOUTS``).
    Raises ConfigError on out-of-range values.
    """
    from slmops.runtime.decoder import PREFILL_CHUNK

    spec = precision_spec(precision)
    if weight_bytes is not None:
        if not 0 < weight_bytes <= 4:
            raise ConfigError(f"weight_bytes={weight_bytes} is not a size per weight; use a value in (0, 4]")
        spec = replace(spec, weight_bytes=weight_bytes)
    try:
        layout = GRAPH_LAYOUTS[graph]
    except KeyError:
        raise ConfigError(f"unknown graph layout {graph!r}; use one of {', '.join(GRAPH_LAYOUTS)}") from None
    ctx = variant.context_length if context_length is None else context_length
    if ctx <= 0 or ctx > variant.context_length:
        raise ConfigError(f"context_length={ctx} is out of range for {variant.id}; use 1..{variant.context_length}")
    if batch < 1:
        raise ConfigError(f"batch={batch} must be at least 1")
    embed = variant.vocab_size * variant.hidden_size
    other = max(variant.params - embed, 0)
    decoder = get_task(variant.task).generative
    copies = layout.prepack_factor if decoder and spec.decoder_prepacked else 1.0
    embedding_bytes = spec.weight_bytes if decoder and layout.quantized_embedding else spec.embedding_bytes
    table = embed * embedding_bytes
    weights = min(table, ctx * batch * EMBEDDING_PAGE_BYTES) + other * spec.weight_bytes * copies
    if decoder and variant.tie_word_embeddings:
        weights += embed * 4 if layout.tied_lm_head_fp32_copy else embed * spec.weight_bytes * copies
    h, heads = variant.hidden_size, variant.attention_heads
    if decoder:
        p = min(prompt_tokens or min(ctx, 512), ctx)
        c = min(p, PREFILL_CHUNK) if layout.chunked_prefill and batch == 1 else p  # positions per graph call
        kv = 2 * variant.layers * variant.kv_heads * variant.head_dim * ctx * batch * spec.kv_bytes
        kept = 1 if layout.last_logits_only else c  # positions whose logits a prefill call writes
        activations = batch * (kept * variant.vocab_size * 4 + c * h * 4 * 8 + heads * c * p * 4)
    else:
        kv = 0
        activations = batch * ctx * (h * 4 * 4 + heads * ctx * 4)
    tokenizer = variant.vocab_size * TOKENIZER_BYTES_PER_ENTRY["bpe" if decoder else "wordpiece"]
    return MemoryEstimate(
        weights=int(weights),
        kv_cache=kv,
        activations=int(activations * ARENA_FACTOR)
        + (DECODER_FIRST_RUN_BYTES_PER_ENTRY * variant.vocab_size if decoder else ENCODER_FIRST_RUN_BYTES),
        overhead=RUNTIME_OVERHEAD_BYTES + tokenizer,
    )


@dataclass(frozen=True)
class DeviceClass:
    """A class of target hardware and the memory an app may use on it."""

    name: str
    kind: str  # "cpu" or "cuda"
    memory_bytes: int


DEVICE_CLASSES: tuple[DeviceClass, ...] = (
    DeviceClass("raspberry-pi-4gb", "cpu", 2 * 2**30),
    DeviceClass("phone-8gb", "cpu", 3 * 2**30),
    DeviceClass("laptop-16gb", "cpu", 8 * 2**30),
    DeviceClass("server-64gb", "cpu", 48 * 2**30),
    DeviceClass("gpu-t4-16gb", "cuda", 15 * 2**30),
    DeviceClass("gpu-h100-80gb", "cuda", 78 * 2**30),
)


def device_compatibility(
    variant: Variant, *, precision: str = "fp32", context_length: int | None = None
) -> dict[str, bool]:
    """For each device class: does ``variant`` at ``precision`` run there and fit in its memory?"""
    spec = precision_spec(precision)
    need = estimate_memory(variant, precision=precision, context_length=context_length).total
    return {d.name: d.kind in spec.devices and need <= d.memory_bytes for d in DEVICE_CLASSES}


def format_params(params: int) -> str:
    """135000000 -> '135M'; 1100000000 -> '1.1B'."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if params >= div:
            value = params / div
            text = f"{value:.1f}" if value < 100 else f"{value:.0f}"
            return text.removesuffix(".0") + unit
    return str(params)


def format_bytes(size: float) -> str:
    """1536 -> '1.5 KiB' (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


_SUFFIX = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}


def parse_params(text: str) -> int:
    """'200M' -> 200000000, '1.1B' -> 1100000000, '5000' -> 5000; raises ConfigError on anything else."""
    raw = text.strip().upper()
    try:
        if raw and raw[-1] in _SUFFIX:
            return int(float(raw[:-1]) * _SUFFIX[raw[-1]])
        return int(raw)
    except ValueError:
        raise ConfigError(f"parameter count {text!r} is not a number like 200M, 1.1B or 5000000") from None
