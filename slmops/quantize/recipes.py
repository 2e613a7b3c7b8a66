"""Quantization recipes: data in configs/recipes.yaml, validated here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slmops.configfile import load_named
from slmops.tasks import TaskName

Method = Literal["none", "matmul_nbits", "gguf_blocks", "dynamic_int8", "fp16"]
GGUF_BLOCK = 32  # weights per Q4_1 / Q8_0 block (ggml's QK4_1 = QK8_0 = 32)


class LowBits(BaseModel):
    """Some MatMuls of a matmul_nbits recipe at fewer bits, their codes chosen by GPTQ on the shipped calibration
    text (slmops/quantize/gptq.py); the rest of the recipe stays as it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: str = Field(min_length=1)  # a regular expression searched in MatMul node names, e.g. "mlp/gate_proj"
    bits: Literal[4] = 4
    block_size: int = Field(default=32, ge=16)
    algorithm: Literal["gptq"] = "gptq"
    calibration_tokens: int = Field(default=32768, ge=64)
    act_order: bool = True
    damp: float = Field(default=0.01, gt=0.0, lt=1.0)
    # how much each calibration window's first position counts in the Hessian against one other position. The
    # first token is the attention sink: its keys and values are read by every later query, so an error there
    # costs far more than its share of a mean over tokens (qkv_proj of SmolLM2-135M: PPL ratio 1.2475 at 1,
    # 1.0048 at 512, the window's length). Weighting projections whose output is not attention's input hurts.
    first_token_weight: float = Field(default=1.0, ge=1.0, le=1e6)

    @model_validator(mode="after")
    def _valid(self) -> LowBits:
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"low_bits.block_size={self.block_size} must be a power of two")
        try:
            re.compile(self.nodes)
        except re.error as exc:
            raise ValueError(f"low_bits.nodes {self.nodes!r} is not a regular expression ({exc})") from None
        return self


class Recipe(BaseModel):
    """One way to turn an fp32 export into a candidate, and where it applies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    description: str = ""
    method: Method
    precision: Literal["fp32", "fp16", "int8", "int4"]
    tasks: list[TaskName]
    devices: list[Literal["cpu", "cuda"]]
    bits: Literal[4, 8] | None = None
    block_size: int | None = Field(default=None, ge=16)
    symmetric: bool = True
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = None
    algorithm: Literal["rtn", "k_quant", "hqq"] = "rtn"  # matmul_nbits: how the 4/8-bit codes are chosen
    lm_head: bool = True  # quantize the output projection (tied to the embedding in SmolLM2) as well
    # matmul_nbits: the output projection's own block size (default: block_size). A tied embedding gathers the
    # lm_head's blocks, so they must divide the hidden size (576 for SmolLM2-135M: 32 or 64, not 128)
    lm_head_block_size: int | None = Field(default=None, ge=16)
    # gather the token embedding quantized (GatherBlockQuantized) where the graph allows: an exact Q8_0 table
    # (gguf_blocks) or a table tied to the quantized lm_head (matmul_nbits); elsewhere it stays fp32
    embedding: bool = False
    remainder: Literal["side", "augment", "drop"] = "side"  # gguf_blocks: see slmops/quantize/gguf_blocks.py
    per_channel: bool = False
    reduce_range: bool = False
    # dynamic_int8: onnxruntime.transformers' fusions for this model type (EmbedLayerNormalization, Attention,
    # SkipLayerNormalization, BiasGelu) applied to the exported graph before quantizing it
    fusion: Literal["bert"] | None = None
    # matmul_nbits: the MatMuls whose names match an entry's nodes at its bits, by GPTQ (calibrated); one mapping
    # or a list of them (each pattern with its own options; a MatMul matched by two entries is refused)
    low_bits: list[LowBits] = Field(default_factory=list)
    # matmul_nbits with low_bits: activation-aware scales (AWQ) folded into the norm before the low_bits MatMuls,
    # their exponent chosen per norm from these by the least GPTQ output error (slmops/quantize/gptq.py)
    awq_alphas: list[float] = Field(default_factory=list)

    @field_validator("low_bits", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [] if value is None else [value] if isinstance(value, dict | LowBits) else value

    @model_validator(mode="after")
    def _method_fields(self) -> Recipe:
        if self.method == "matmul_nbits":
            if self.bits is None or self.block_size is None:
                raise ValueError("matmul_nbits needs bits (4 or 8) and block_size")
            for key in ("block_size", "lm_head_block_size"):
                size = getattr(self, key)
                if size is not None and size & (size - 1):
                    raise ValueError(f"{key}={size} must be a power of two")
            if self.precision != f"int{self.bits}":
                raise ValueError(f"precision {self.precision!r} does not match bits={self.bits}")
            if self.algorithm == "k_quant" and self.bits != 4:
                raise ValueError("algorithm k_quant only builds 4-bit weights; use rtn for bits=8")
        elif self.bits is not None or self.block_size is not None or self.lm_head_block_size is not None:
            raise ValueError(
                f"bits/block_size/lm_head_block_size only apply to method matmul_nbits, not {self.method!r}"
            )
        if self.embedding and not (self.method == "gguf_blocks" or (self.method == "matmul_nbits" and self.lm_head)):
            raise ValueError(
                "embedding: true needs method gguf_blocks, or matmul_nbits with lm_head: true "
                "(the tied embedding then gathers the quantized lm_head)"
            )
        if self.method == "gguf_blocks" and self.precision != "int4":
            raise ValueError("gguf_blocks maps Q4_1/Q8_0 blocks: precision int4")
        if self.method == "fp16" and self.precision != "fp16":
            raise ValueError("method fp16 has precision fp16")
        if self.method == "dynamic_int8" and self.precision != "int8":
            raise ValueError("dynamic_int8 has precision int8")
        if len({low.calibration_tokens for low in self.low_bits}) > 1:
            raise ValueError(
                "low_bits entries share one calibration pass: give them one calibration_tokens, not "
                f"{[low.calibration_tokens for low in self.low_bits]}"
            )
        for low in self.low_bits:
            if self.method != "matmul_nbits" or self.bits == low.bits:
                raise ValueError(
                    f"low_bits applies to method matmul_nbits with bits above {low.bits}, "
                    f"not {self.method!r} with bits={self.bits}"
                )
        if self.awq_alphas and not self.low_bits:
            raise ValueError("awq_alphas scales the inputs of low_bits MatMuls: give low_bits too, or drop awq_alphas")
        bad = [a for a in self.awq_alphas if not 0.0 <= a <= 1.0]
        if bad or len(set(self.awq_alphas)) != len(self.awq_alphas):
            raise ValueError(
                f"awq_alphas {self.awq_alphas}: give distinct exponents between 0 and 1, e.g. [0, 0.25, 0.5]"
            )
        if self.fusion is not None and self.method != "dynamic_int8":
            raise ValueError(f"fusion applies to method dynamic_int8 only, not {self.method!r}")
        if self.method == "none" and self.precision != "fp32":
            raise ValueError("method none keeps precision fp32")
        return self

    @property
    def weight_bits(self) -> int:
        """Bits per weight of the quantized MatMuls (gguf_blocks: the GGUF's Q4_1 blocks; its Q8_0 head is 8)."""
        if self.bits is not None:
            return self.bits
        return {"none": 32, "fp16": 16, "dynamic_int8": 8, "gguf_blocks": 4}[self.method]

    @property
    def granularity(self) -> str:
        """What one scale covers: ``block-<n>`` weights (``block-128, lm_head block-64`` where the lm_head's
        differ; then ``; 4-bit block-32 gptq: <patterns>`` for the low_bits entries), ``per-channel``,
        ``per-tensor``, or ``none``."""
        if self.block_size is not None:
            head = self.lm_head_block_size
            groups: dict[str, list[str]] = {}
            for low in self.low_bits:
                kind = f"{low.bits}-bit block-{low.block_size} {low.algorithm}" + ("+awq" if self.awq_alphas else "")
                groups.setdefault(kind, []).append(low.nodes)
            return (
                f"block-{self.block_size}"
                + (f", lm_head block-{head}" if head and head != self.block_size else "")
                + "".join(f"; {kind}: {', '.join(nodes)}" for kind, nodes in groups.items())
            )
        if self.method == "gguf_blocks":
            return f"block-{GGUF_BLOCK}"
        if self.method == "dynamic_int8":
            return "per-channel" if self.per_channel else "per-tensor"
        return "none"

    def supports(self, task: str, device: str) -> bool:
        return task in self.tasks and device in self.devices


def load_recipes(path: Path | None = None) -> dict[str, Recipe]:
    """Recipes by name from ``<config_dir>/recipes.yaml``; raises ConfigError naming the recipe and field."""
    return load_named("recipes.yaml", Recipe, key="recipes", path=path)
