"""onnxruntime quantizers behind each recipe method (registered in ``QUANTIZERS``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from slmops.quantize.recipes import Recipe

logger = logging.getLogger(__name__)

Quantizer = Callable[[Path, Path, Recipe], None]
QUANTIZERS: dict[str, Quantizer] = {}


def register_quantizer(method: str) -> Callable[[Quantizer], Quantizer]:
    """Decorator registering the quantizer for a recipe ``method``."""

    def deco(fn: Quantizer) -> Quantizer:
        QUANTIZERS[method] = fn
        return fn

    return deco


@register_quantizer("none")
def keep_fp32(src: Path, dst: Path, recipe: Recipe) -> None:
    """The unquantized reference: the exported graph, linked."""
    from slmops.artifacts import link_or_copy

    import shutil

    for path in src.parent.glob(src.name + "*"):  # the graph and its external data (model.onnx_data / .data)
        if path == src:
            link_or_copy(path, dst)
        else:  # onnx refuses external data with several hard links ("potential hardlink attack"): copy it
            shutil.copy2(path, dst.with_name(path.name))


@register_quantizer("matmul_nbits")
def matmul_nbits(src: Path, dst: Path, recipe: Recipe) -> None:
    """Weight-only block quantization of MatMul weights (ORT MatMulNBits). Activations stay fp32.

    On AVX2 CPUs without VNNI this keeps SmolLM2's PPL (12.54 -> 12.62 at 8 bits),
    where dynamic W8A8 ruins it (21.1).
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(
        block_size=recipe.block_size or 32,
        is_symmetric=recipe.symmetric,
        accuracy_level=recipe.accuracy_level,
        bits=recipe.bits or 4,
        op_types_to_quantize=("MatMul",),
    )
    model = onnx.load(str(src))
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    large = quantizer.model.model.ByteSize() > 2_000_000_000 if hasattr(quantizer.model.model, "ByteSize") else False
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=large)


@register_quantizer("dynamic_int8")
def dynamic_int8(src: Path, dst: Path, recipe: Recipe) -> None:
    """Dynamic (W8A8) int8: for encoders. Per-channel keeps MiniLM at cosine 0.991."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        weight_type=QuantType.QInt8,
    )
