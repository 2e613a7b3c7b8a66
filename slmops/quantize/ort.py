"""onnxruntime quantizers behind each recipe method (registered in ``QUANTIZERS``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from slmops.plugins import PluginRegistry
from slmops.quantize.recipes import Recipe

logger = logging.getLogger(__name__)

# protobuf caps a serialized ModelProto at 2 GiB: larger graphs keep their weights in ONNX external data
MAX_PROTO_BYTES = 2_000_000_000

Quantizer = Callable[..., None]  # (src graph, dst graph, recipe, *, fetched: the fetched HF folder or None)
# recipe method -> quantizer; every built-in one is defined in this module
QUANTIZERS: PluginRegistry[Quantizer] = PluginRegistry("quantizer", builtins=(), group="slmops.quantizers")


@QUANTIZERS.register("none")
def keep_fp32(src: Path, dst: Path, recipe: Recipe, *, fetched: Path | None = None) -> None:
    """The unquantized reference: the exported graph, linked."""
    import shutil

    from slmops.artifacts import link_or_copy

    for path in src.parent.glob(src.name + "*"):  # the graph and its external data (model.onnx_data / .data)
        if path == src:
            link_or_copy(path, dst)
        else:  # onnx refuses external data with several hard links ("potential hardlink attack"): copy it
            shutil.copy2(path, dst.with_name(path.name))


def save_onnx(model, dst: Path) -> None:
    """Save ``model`` to ``dst``; above MAX_PROTO_BYTES the weights go to ``<dst>.data`` (ONNX external data)."""
    import onnx

    if model.ByteSize() > MAX_PROTO_BYTES:
        onnx.save_model(
            model,
            str(dst),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=dst.name + ".data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(dst))


def output_projections(model) -> list[str]:
    """Names of the MatMul nodes writing a graph output directly (the lm_head of a decoder)."""
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.output[0] in outputs]


@QUANTIZERS.register("matmul_nbits")
def matmul_nbits(src: Path, dst: Path, recipe: Recipe, *, fetched: Path | None = None) -> None:
    """Weight-only block quantization of MatMul weights (ORT MatMulNBits). Activations stay fp32.

    On AVX2 CPUs without VNNI this keeps SmolLM2's PPL (12.54 -> 12.62 at 8 bits),
    where dynamic W8A8 ruins it (21.1). ``algorithm`` picks ORT's RTN, k-quant or HQQ
    code search; ``lm_head: false`` keeps the output projection in fp32.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        KQuantWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    model = onnx.load(str(src))
    heads = output_projections(model)
    block = recipe.block_size or 32
    if recipe.low_bits:
        _low_bits(model, src, recipe, [] if recipe.lm_head else heads)
    head_block = recipe.lm_head_block_size or block

    def quantize(model, block: int, exclude: list[str]):
        if recipe.algorithm == "rtn":
            config = DefaultWeightOnlyQuantConfig(
                block_size=block,
                is_symmetric=recipe.symmetric,
                accuracy_level=recipe.accuracy_level,
                bits=recipe.bits or 4,
                op_types_to_quantize=("MatMul",),
            )
        elif recipe.algorithm == "hqq":  # asymmetric by construction
            config = HQQWeightOnlyQuantConfig(block_size=block, bits=recipe.bits or 4, op_types_to_quantize=("MatMul",))
        else:
            config = KQuantWeightOnlyQuantConfig(op_types_to_quantize=("MatMul",))
        quantizer = MatMulNBitsQuantizer(
            model,
            block_size=block,
            is_symmetric=recipe.symmetric,
            accuracy_level=recipe.accuracy_level,
            nodes_to_exclude=exclude,
            algo_config=config,
        )
        quantizer.process()
        return quantizer.model

    if not recipe.lm_head or head_block == block:
        quantized = quantize(model, block, [] if recipe.lm_head else heads)
    else:  # the body at block_size, then the lm_head (the one MatMul with a constant weight left) at its own
        quantized = quantize(quantize(model, block, heads).model, head_block, [])
    if recipe.embedding:
        from slmops.quantize.tied import gather_from_quantized_head

        if not gather_from_quantized_head(quantized.model):
            logger.info("%s: no token embedding tied to the quantized lm_head; the table stays fp32", src.parent.name)
    quantized.topological_sort()
    save_onnx(quantized.model, dst)


def _low_bits(model, src: Path, recipe: Recipe, exclude: list[str]) -> None:
    """The recipe's ``low_bits`` MatMuls as calibrated GPTQ MatMulNBits, in place (the lm_head too where a pattern
    matches it and the recipe quantizes it; the tied embedding then gathers those codes)."""
    from slmops.errors import QuantizeError
    from slmops.quantize.gptq import quantize_matching
    from slmops.runtime.card import read_model_card
    from slmops.settings import default_threads

    card = read_model_card(src.parent)
    if card.graph not in ("genai-decoder", "optimum-decoder"):
        raise QuantizeError(f"low_bits calibrates decoder graphs; {src.parent} holds a {card.graph!r} graph")
    quantize_matching(
        model,
        exclude=exclude,
        folder=src.parent,
        card=card,
        entries=recipe.low_bits,
        accuracy_level=recipe.accuracy_level if recipe.accuracy_level is not None else 0,
        threads=default_threads(),
        awq_alphas=recipe.awq_alphas,
    )


@QUANTIZERS.register("gguf_blocks")
def gguf_blocks(src: Path, dst: Path, recipe: Recipe, *, fetched: Path | None = None) -> None:
    """The fetched GGUF's own Q4_1/Q8_0 blocks as MatMulNBits (slmops/quantize/gguf_blocks.py)."""
    from slmops.errors import QuantizeError
    from slmops.quantize.gguf_blocks import convert

    found = sorted(Path(fetched).glob("*.gguf")) if fetched is not None else []
    if not found:
        raise QuantizeError(
            f"recipe {recipe.name!r} maps a GGUF's blocks, but {fetched} holds no .gguf file; "
            "use it only for variants fetched with source: gguf (and re-run `slmops fetch`)"
        )
    convert(
        src,
        dst,
        found[0],
        accuracy_level=recipe.accuracy_level if recipe.accuracy_level is not None else 4,
        remainder_mode=recipe.remainder,
        lm_head=recipe.lm_head,
        embedding=recipe.embedding,
    )


@QUANTIZERS.register("fp16")
def fp16(src: Path, dst: Path, recipe: Recipe, *, fetched: Path | None = None) -> None:
    """fp16 weights and compute for CUDA, fp32 inputs/outputs (onnxruntime's float16 converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    save_onnx(model, dst)


@QUANTIZERS.register("dynamic_int8")
def dynamic_int8(src: Path, dst: Path, recipe: Recipe, *, fetched: Path | None = None) -> None:
    """Dynamic (W8A8) int8: for encoders. Per-channel keeps MiniLM at cosine 0.991.

    Routes weighed for all-MiniLM-L6-v2 and left out, by measurement (256 eval sentences in calls of 32, the
    runtime's length-bucketed runs, ratio to torch fp32 batch by batch in one process, 1 thread, CPU time, load
    ~2 from other jobs; this graph as exported: 3.18x torch):
    * onnxruntime.transformers' BERT fusions before quantizing (EmbedLayerNormalization, Attention,
      SkipLayerNormalization, BiasGelu: 524 nodes -> 46, quantized to QAttention/QEmbedLayerNormalization,
      which needs extra_options DefaultTensorType=FLOAT): 3.19x, cosine 0.9934 / 0.9904, i.e. no gain;
      fused fp32 2.06x against 2.12x unfused. At 2 threads with 2 concurrent runs (wall, load 2.7-5) fused was
      +9% in one run and -15% in another. onnxruntime's own ORT_ENABLE_ALL pass already fuses
      LayerNorm/SkipLayerNorm/Gelu and packs the int8 MatMuls, and 70% of the time is in those MatMuls.
      Kept as the recipe option ``fusion: bert``, off in configs/recipes.yaml.
    * weight-only MatMulNBits (block 32, int8 compute, accuracy_level 4): 8-bit 1.41x (cos 0.9997), 4-bit
      1.92x (cos 0.971): slower than W8A8 at these short sequences.
    ORT profile of this graph (1 thread, bucketed): DynamicQuantizeMatMul 53%, MatMulIntegerToFloat 17%, Gelu
    (erf) 7%, SkipLayerNormalization 6%, attention's MatMul/Softmax/Transpose ~8%; tokenization 1.5% of wall.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from slmops.quiet import log_records_dropped

    extra: dict[str, object] = {}
    if recipe.fusion is not None:
        import onnx

        src = fuse_transformer(src, Path.cwd() / "fused.onnx", model_type=recipe.fusion)
        # the fused contrib ops (Attention, SkipLayerNormalization, ...) have no ONNX shape inference, so the
        # quantizer cannot type their outputs; they are all float
        extra["DefaultTensorType"] = onnx.TensorProto.FLOAT
    weights = sum(p.stat().st_size for p in src.parent.glob(src.name + "*"))
    # quantize_dynamic ends with logging.warning("Please consider pre-processing before quantization ...") on the
    # root logger for any graph without ORT's pre-processing tag. The recipe quantizes the exported graph as it
    # is on purpose (its gate and benchmark numbers are for exactly that graph), so the hint does not apply.
    with log_records_dropped("root", r"^Please consider (to run )?pre-processing before quantization"):
        quantize_dynamic(
            str(src),
            str(dst),
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            weight_type=QuantType.QInt8,
            use_external_data_format=weights > MAX_PROTO_BYTES,
            extra_options=extra,
        )


def fuse_transformer(src: Path, dst: Path, *, model_type: str) -> Path:
    """``src`` with onnxruntime.transformers' fusions for ``model_type`` (heads and width read from the graph),
    saved to ``dst``, which is returned; ``src`` itself where not one attention block fuses (an unknown pattern)."""
    from onnxruntime.transformers.optimizer import optimize_model

    # opt_level 0: the fusions only; onnxruntime's own optimizer still runs when the runtime opens the graph
    model = optimize_model(str(src), model_type=model_type, opt_level=0, use_gpu=False)
    fused = model.get_fused_operator_statistics()
    if not fused.get("Attention"):
        logger.warning(
            "onnxruntime's %s fusions found no attention block in %s (fused: %s); quantizing it unfused",
            model_type,
            src,
            {op: n for op, n in fused.items() if n},
        )
        return src
    logger.info("fused %s: %s", src.parent.name, ", ".join(f"{n} {op}" for op, n in fused.items() if n))
    model.save_model_to_file(str(dst), use_external_data_format=model.model.ByteSize() > MAX_PROTO_BYTES)
    return dst
