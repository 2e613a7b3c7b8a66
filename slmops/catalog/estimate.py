"""Human-readable sizes, memory estimates and device compatibility (the seed's utilities).

The estimate is weights + KV cache + runtime overhead. Bytes per weight and
which devices run which precision are data (``PRECISIONS``), not branches.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    decoder_prepacked: bool = False  # MatMulNBits keeps a prepacked copy of its weights beside the initializer
    encoder_prepacked: bool = False  # MLAS prepacks fp32 GEMM weights of the encoder graphs (measured: ~2x)


# Weight-only MatMulNBits with block 32 stores one fp32 scale per block (+4/32 byte) and, asymmetric,
# a packed zero point; embeddings stay fp32. Quantized decoders use MatMulNBits (prepacked at load);
# quantized encoders use dynamic int8 (MatMulInteger, no extra copy).
PRECISIONS: dict[str, PrecisionSpec] = {
    "fp32": PrecisionSpec(4.0, 4.0, 4, ("cpu", "cuda"), encoder_prepacked=True),
    "fp16": PrecisionSpec(2.0, 2.0, 2, ("cuda",)),
    "int8": PrecisionSpec(1.0 + 4 / 32 + 1 / 32, 4.0, 4, ("cpu", "cuda"), decoder_prepacked=True),
    "int4": PrecisionSpec(0.5 + 4 / 32 + 0.5 / 32, 4.0, 4, ("cpu", "cuda"), decoder_prepacked=True),
}


# Calibrated against the benchmark (peak RSS, VmHWM) of SmolLM2-135M-Instruct (fp32/int8/int4) and
# all-MiniLM-L6-v2 (fp32/dynamic int8) on onnxruntime 1.32, 2 threads: every estimate within 10%
# (tests/unit/test_estimate.py holds the measurements).
@dataclass(frozen=True)
class GraphLayout:
    """How an exporter lays out a decoder's weights, as onnxruntime ends up holding them."""

    tied_lm_head_fp32_copy: bool  # a tied lm_head becomes its own fp32 initializer, never quantized
    prepack_factor: float  # resident copies of MatMulNBits weights (initializer + prepacked), measured


# optimum: lm_head = MatMul(x, Transpose(embed)), folded to an fp32 copy that the quantizers skip.
# genai (onnxruntime-genai builder, shared_embeddings=false): lm_head is a separate weight, quantized.
GRAPH_LAYOUTS: dict[str, GraphLayout] = {
    "optimum": GraphLayout(tied_lm_head_fp32_copy=True, prepack_factor=2.0),
    "genai": GraphLayout(tied_lm_head_fp32_copy=False, prepack_factor=1.55),
}
ARENA_FACTOR = 1.5  # onnxruntime's arena grows by doubling: activations cost ~1.5x their size


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed to run a variant; ``total`` is what a memory budget is checked against."""

    weights: int
    kv_cache: int
    activations: int
    overhead: int

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
) -> MemoryEstimate:
    """Estimate peak memory for ``batch`` sequences of ``context_length`` tokens at ``precision``.

    Decoders: weights (a tied lm_head becomes its own fp32 copy in the ONNX graph; MatMulNBits
    weights are held twice, initializer + prepacked) + fp32 KV cache + the prefill of
    ``prompt_tokens`` (default: min(context, 512)), whose logits cover every position.
    Encoders: weights + activations of one batch. ``graph`` is the exporter's layout
    (``GRAPH_LAYOUTS``). Raises ConfigError on out-of-range values.
    """
    spec = precision_spec(precision)
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
    if decoder:
        copies = layout.prepack_factor if spec.decoder_prepacked else 1.0
    else:
        copies = 2.0 if spec.encoder_prepacked else 1.0
    weights = embed * spec.embedding_bytes + other * spec.weight_bytes * copies
    if decoder and variant.tie_word_embeddings:
        weights += embed * 4 if layout.tied_lm_head_fp32_copy else embed * spec.weight_bytes * copies
    h, heads = variant.hidden_size, variant.attention_heads
    if decoder:
        p = min(prompt_tokens or min(ctx, 512), ctx)
        kv = 2 * variant.layers * variant.kv_heads * variant.head_dim * ctx * batch * spec.kv_bytes
        activations = batch * (p * variant.vocab_size * 4 + p * h * 4 * 16 + heads * p * p * 4)
    else:
        kv = 0
        activations = batch * ctx * (h * 4 * 12 + heads * ctx * 4)
    return MemoryEstimate(
        weights=int(weights), kv_cache=kv, activations=int(activations * ARENA_FACTOR), overhead=RUNTIME_OVERHEAD_BYTES
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
