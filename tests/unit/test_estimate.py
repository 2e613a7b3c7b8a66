from __future__ import annotations

from pathlib import Path

import pytest

from slmops.catalog.estimate import (
    ARENA_FACTOR,
    EMBEDDING_PAGE_BYTES,
    PRECISIONS,
    RUNTIME_OVERHEAD_BYTES,
    TOKENIZER_BYTES_PER_ENTRY,
    device_compatibility,
    estimate_memory,
    format_bytes,
    format_params,
    parse_params,
)
from slmops.catalog.schema import load_catalog
from slmops.errors import ConfigError

CATALOG = load_catalog(Path(__file__).resolve().parents[2] / "configs" / "catalog.yaml")


def test_estimate_components_for_smollm2() -> None:
    v = CATALOG.get("smollm2-135m-instruct")
    est = estimate_memory(v, precision="fp32", context_length=2048)
    embed = v.vocab_size * v.hidden_size
    # the tied lm_head is its own fp32 copy; the embedding table is mapped, a page resident per position gathered
    assert est.weights == int(v.params * 4 + min(embed * 4, 2048 * EMBEDDING_PAGE_BYTES))
    assert est.kv_cache == 2 * 30 * 3 * 64 * 2048 * 4
    assert est.overhead == RUNTIME_OVERHEAD_BYTES + v.vocab_size * TOKENIZER_BYTES_PER_ENTRY["bpe"]
    assert est.total == est.weights + est.kv_cache + est.activations + est.overhead


def test_lower_precision_shrinks_weights_not_kv() -> None:
    v = CATALOG.get("tinyllama-1.1b-chat-v1.0")
    fp32, int8, int4 = (estimate_memory(v, precision=p, context_length=1024) for p in ("fp32", "int8", "int4"))
    assert fp32.weights > int8.weights > int4.weights
    assert fp32.kv_cache == int8.kv_cache == int4.kv_cache
    assert estimate_memory(v, precision="fp32", context_length=1024, batch=4).kv_cache == 4 * fp32.kv_cache


def test_encoders_have_no_kv_cache() -> None:
    assert estimate_memory(CATALOG.get("all-minilm-l6-v2")).kv_cache == 0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"precision": "int3"}, "int3"),
        ({"context_length": 0}, "context_length=0"),
        ({"context_length": 10**6}, "1000000"),
        ({"batch": 0}, "batch=0"),
    ],
)
def test_bad_estimate_inputs_name_the_value(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        estimate_memory(CATALOG.get("smollm2-135m"), **kwargs)


def test_device_compatibility() -> None:
    big = device_compatibility(CATALOG.get("openelm-3b"), precision="fp32")
    small = device_compatibility(CATALOG.get("smollm2-135m"), precision="int4")
    assert not big["raspberry-pi-4gb"] and small["raspberry-pi-4gb"]
    assert not device_compatibility(CATALOG.get("smollm2-135m"), precision="fp16")["laptop-16gb"]  # fp16 is CUDA-only
    assert set(PRECISIONS) >= {"fp32", "fp16", "int8", "int4"}


@pytest.mark.parametrize(
    ("n", "text"), [(134_515_008, "135M"), (1_100_048_384, "1.1B"), (22_713_216, "22.7M"), (999, "999")]
)
def test_format_params(n: int, text: str) -> None:
    assert format_params(n) == text


def test_format_and_parse() -> None:
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(10) == "10 B"
    assert parse_params("200M") == 200_000_000 and parse_params("1.1b") == 1_100_000_000 and parse_params("42") == 42
    with pytest.raises(ConfigError, match="'lots'"):
        parse_params("lots")


def test_chunked_prefill_bounds_the_logits() -> None:
    v = CATALOG.get("smollm2-135m-instruct")
    genai, optimum = (
        estimate_memory(v, precision="int4", context_length=1088, prompt_tokens=1024, graph=g)
        for g in ("genai", "optimum")
    )
    # the genai runtime feeds the prompt PREFILL_CHUNK tokens at a time and keeps the last position's logits only
    assert optimum.activations - genai.activations > (1024 - 1) * v.vocab_size * 4 * ARENA_FACTOR


# Peak RSS (MiB, VmHWM) measured by benchmarks/memory.py on 2026-12-01 (21:00: the cached graph lists the largest
# weights first, the embedding table is read a page per row), onnxruntime 1.32, 2 threads, each candidate opened as
# slmops.load opens it (optimized-graph cache, weights memory-mapped): decoders (the genai candidates gguf-q4 = int4,
# wo-int8 = int8 with blocks of 128, fp32, with logits_to_keep) at a 512-token prompt + 64 new tokens, and gguf-q4
# and wo-int8 at 128; encoders at batch 32 of a 15-token sentence. The estimate must stay within 10%. (optimum's
# decoder layout was last measured before the mapped cache, 669-963 MiB, and is no longer checked here.) The last
# column is the candidate's bytes per MatMulNBits weight (slmops.quantize.footprint), which the registered estimate
# uses: wo-int8 1.0399, gguf-q4 0.7426 (its 8-bit head), wo-int8-gptq4 0.8843.
WO_INT8, GGUF_Q4, GPTQ4 = 1.0399, 0.7426, 0.8843
MEASURED = [
    ("smollm2-135m-instruct", "fp32", 512, 637.6, None),
    ("smollm2-135m-instruct", "int8", 512, 271.9, WO_INT8),
    ("smollm2-135m-instruct", "int4", 512, 251.2, GGUF_Q4),
    ("smollm2-135m-instruct", "int4", 128, 232.3, GGUF_Q4),
    ("smollm2-135m-instruct", "int8", 128, 252.0, WO_INT8),
    ("all-minilm-l6-v2", "fp32", 16, 134.2, None),
    ("all-minilm-l6-v2", "int8", 16, 102.1, None),
    # the same code on a new machine of the same kind (2026-12-01 22:25-22:54): every row 14 MiB higher, all in the
    # imports (numpy's and onnxruntime's file-backed library pages: 20.2 and 30.6 MiB against 14.9 and 20.0)
    ("smollm2-135m-instruct", "int8", 128, 265.7, WO_INT8),
    ("smollm2-135m-instruct", "int4", 128, 246.0, GGUF_Q4),
    ("all-minilm-l6-v2", "fp32", 16, 148.6, None),
    ("all-minilm-l6-v2", "int8", 16, 116.2, None),
    # wo-int8-gptq4 (gate, qkv and o projections 4-bit), 2026-12-02 04:32, the first machine's kind of rows
    ("smollm2-135m-instruct", "int8", 128, 230.6, GPTQ4),
    ("smollm2-135m-instruct", "int8", 512, 250.3, GPTQ4),
]


@pytest.mark.parametrize(("variant", "precision", "tokens", "measured_mib", "weight_bytes"), MEASURED)
def test_estimate_within_10_percent_of_measured(
    variant: str, precision: str, tokens: int, measured_mib: float, weight_bytes: float | None
) -> None:
    v = CATALOG.get(variant)
    if v.task == "causal-lm":
        est = estimate_memory(
            v,
            precision=precision,
            context_length=tokens + 64,
            prompt_tokens=tokens,
            graph="genai",
            weight_bytes=weight_bytes,
        )
    else:
        est = estimate_memory(v, precision=precision, context_length=tokens, batch=32)
    assert abs(est.total / 2**20 - measured_mib) / measured_mib < 0.10


def test_a_candidates_own_bytes_per_weight_replace_the_precisions() -> None:
    v = CATALOG.get("smollm2-135m-instruct")
    nominal, mixed = (
        estimate_memory(v, precision="int8", context_length=192, prompt_tokens=128, graph="genai", weight_bytes=w)
        for w in (None, GPTQ4)
    )
    assert mixed.weights < nominal.weights and mixed.kv_cache == nominal.kv_cache
    with pytest.raises(ConfigError, match="weight_bytes=0"):
        estimate_memory(v, precision="int8", weight_bytes=0)
