"""GPTQ 4-bit codes for chosen MatMuls of a decoder graph, calibrated on text, as MatMulNBits with integer zero points.

GPTQ (Frantar et al., 2022) quantizes a weight one input column at a time and spreads each column's rounding
error over the columns not yet quantized, weighted by the inverse of the layer's input Hessian ``X^T X``
(here: the fp32 graph's activations over the calibration text). It picks codes for MatMulNBits' fast format
(uint4 codes, fp32 scale and integer zero point per block of 32), where round-to-nearest on SmolLM2's weights
costs a lot: they are Q4_1-dequantized (``d * q + m`` per block of 32), and an integer zero point cannot hold
``m`` (see gguf_blocks.py). onnxruntime's own GPTQ config needs Intel's neural-compressor; this is the
algorithm's reference form (the authors' ``gptq.py``: lazy batches of 128 columns, Cholesky of the inverse
Hessian, 1% dampening, act-order with static groups), about 60 lines of numpy.

SmolLM2-135M-Instruct, PPL on slmops' eval text with the rest of the graph as wo-int8 (14.49, ratio 1.0071;
fp32 14.39), one projection kind at 4 bits in every layer, 2026-12-02:

  =================  ======================  =======================  ==============================
  4-bit projection   round to nearest        GPTQ, 8k tokens           GPTQ, 33k tokens, act-order
  =================  ======================  =======================  ==============================
  mlp/gate_proj      1.0406                  1.0273                    **1.0142**
  mlp/up_proj        1.0572                  1.0262                    --
  mlp/down_proj      1.0672                  1.0477                    --
  attn/o_proj        1.0159                  1.0015                    1.0204
  attn/qkv_proj      1.0595                  1.2475                    --
  gate + o           --                      --                        1.0250
  gate + up + o      --                      1.0450                    1.0606
  =================  ======================  =======================  ==============================

The attention sink. qkv_proj is the one projection GPTQ makes worse than round-to-nearest: a mean over tokens
hardly weighs the first token, whose keys and values every later query reads. ``first_token_weight`` scales
each calibration window's first position in the Hessian (``X^T W X``); at 512 (as much as the other 511 of the
window together), 2026-12-02 04:10, same eval text:

  ==========================================================  ==========  ======
  4-bit projections (GPTQ, 33k tokens, act-order)              PPL ratio   top-1
  ==========================================================  ==========  ======
  qkv, weighted                                                1.0048      --
  gate + qkv weighted                                          1.0193      0.909
  gate + qkv weighted + o (**wo-int8-gptq4**)                  **1.0270**  0.887
  gate + qkv weighted + o weighted                             1.0282      0.900
  gate + qkv weighted + lm_head (tied embedding 4-bit too)     1.0555      0.856
  gate weighted + qkv weighted                                 1.0319      --
  every projection weighted                                    1.1545      --
  ==========================================================  ==========  ======

Blocks of 64 and activation-aware scales. onnxruntime's 4-bit MatMulNBits call in blocks of 32 costs about as
much as an 8-bit one in blocks of 128 on the VNNI Xeon (the scale and zero point per 32 weights); in blocks of 64
it costs 13-18% less (``benchmarks/kernels.py``), but GPTQ alone loses quality there. ``awq_alphas`` scales each
input channel of the norm before the low-bit MatMuls by ``rms(x) ** alpha`` first (AWQ, Lin et al. 2023,
:func:`fold_activation_scales`: exact in fp32, the norm's weight divided by what the MatMuls' rows are multiplied
by). 2026-12-02 11:00, gate + qkv weighted + o, PPL ratio on the eval text (1,214 tokens) and on 12,287 tokens of
the README (held out, a second opinion):

  ======================================================  ===========  =========
  4-bit projections (GPTQ, 33k tokens, act-order)          eval text    README
  ======================================================  ===========  =========
  blocks of 32 (wo-int8-gptq4)                             **1.0270**   **1.0243**
  blocks of 32, AWQ scales                                 1.0487       1.0266
  blocks of 64                                             1.0481       1.0376
  blocks of 64, AWQ scales, alpha in 0..0.5 by 0.125       1.0302       1.0301
  ======================================================  ===========  =========

The scales recover half of what blocks of 64 lose on the longer text, nothing in blocks of 32; the short eval
text moves by up to 0.03 between codes this close (the same method with Hessians recalibrated on the scaled graph
instead of rescaled: 1.0258), so blocks of 64 stay out of the shipped recipe (decode ~3% faster, past the gate).

Calibrating on Python's documentation (pydoc topics) instead of general text overfit it: 16.9 against RTN's
18.7 on that text, 20.1 against 18.3 on the eval text, all projections at 4 bits. The shipped calibration text
(``data/calibration.txt``, 33k SmolLM2 tokens) is SmolLM2-135M-Instruct's own sampled continuations (wo-int8,
temperature 1.0, top-p 0.95, seeds 1234, 1, 2, 3, 256 tokens each) of 32 short openings across prose, code,
dialogue and lists: data-free calibration, disjoint from the eval text. It reads as a small model's rambling,
which is what it is.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from slmops.errors import QuantizeError

logger = logging.getLogger(__name__)

CALIBRATION_WINDOW = 512  # tokens per calibration forward (non-overlapping windows, each from position 0)


@dataclass(frozen=True)
class Codes:
    """One weight ``[K, N]`` as MatMulNBits wants it: codes, scales and zero points per block of ``block`` inputs."""

    codes: np.ndarray  # uint8 [N, K] in 0 .. 2**bits - 1
    scales: np.ndarray  # float32 [N, K / block]
    zeros: np.ndarray  # uint8 [N, K / block]
    bits: int
    block: int

    def dequantized(self) -> np.ndarray:
        """The weight ``[K, N]`` these codes stand for."""
        n, k = self.codes.shape
        grouped = self.codes.reshape(n, k // self.block, self.block).astype(np.float32) - self.zeros[..., None]
        return (grouped * self.scales[..., None]).reshape(n, k).T

    def packed(self) -> tuple[np.ndarray, np.ndarray]:
        """(B ``[N, K/block, block/2]``, zero points ``[N, ceil(K/block / 2)]``): two 4-bit values a byte, low first."""
        n, k = self.codes.shape
        grouped = self.codes.reshape(n, k // self.block, self.block)
        weights = (grouped[..., 0::2] | (grouped[..., 1::2] << 4)).astype(np.uint8)
        nb = k // self.block
        zp = np.zeros((n, (nb + 1) // 2), dtype=np.uint8)
        zp[:, : (nb + 1) // 2] |= self.zeros[:, 0::2]
        zp[:, : nb // 2] |= self.zeros[:, 1::2] << 4
        return weights, zp


def calibration_text() -> str:
    """The shipped calibration text (see the module docstring for how it was made)."""
    return resources.files("slmops.quantize").joinpath("data/calibration.txt").read_text(encoding="utf-8")


def _block_params(w: np.ndarray, maxq: int) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric min-max scale and integer zero point per row of ``w`` [N, block], the range widened to hold 0."""
    low, high = np.minimum(w.min(axis=1), 0.0), np.maximum(w.max(axis=1), 0.0)
    scale = (high - low) / maxq
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero block: any scale, code = zero point
    return scale, np.clip(np.rint(-low / scale), 0, maxq)


def gptq(
    weight: np.ndarray,
    hessian: np.ndarray,
    *,
    bits: int = 4,
    block: int = 32,
    damp: float = 0.01,
    act_order: bool = True,
    lazy: int = 128,
) -> Codes:
    """GPTQ codes for the MatMul weight ``weight`` [K, N] given its input Hessian ``hessian`` [K, K] (``X^T X``).

    Scales and zero points come from the original weights block by block (static groups), so act-order (columns
    in decreasing Hessian diagonal) keeps MatMulNBits' block layout. Raises QuantizeError when K is not a
    multiple of ``block`` or the dampened Hessian is not positive definite.
    """
    k, n = weight.shape
    if k % block:
        raise QuantizeError(f"GPTQ needs the input size to be a multiple of block_size {block}; got K={k}")
    w = weight.T.astype(np.float64)  # rows: outputs; columns: the inputs GPTQ walks through
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0  # inputs never active in calibration: their weights do not matter, zero them
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    maxq = 2**bits - 1
    scales, zeros = np.empty((n, k // block)), np.empty((n, k // block))
    for g in range(k // block):
        scales[:, g], zeros[:, g] = _block_params(w[:, g * block : (g + 1) * block], maxq)
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    w, h = w[:, order], h[order][:, order]
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    try:
        upper = np.linalg.cholesky(np.linalg.inv(h)).T  # Hinv = U^T U
    except np.linalg.LinAlgError as exc:
        raise QuantizeError(
            f"the calibration Hessian is not positive definite ({exc}); raise low_bits.damp above {damp}"
        ) from exc
    codes = np.empty((n, k), dtype=np.uint8)
    for start in range(0, k, lazy):
        stop = min(start + lazy, k)
        chunk, errors, u = w[:, start:stop].copy(), np.zeros((n, stop - start)), upper[start:stop, start:stop]
        for i in range(stop - start):
            column = order[start + i]
            scale, zero = scales[:, column // block], zeros[:, column // block]
            q = np.clip(np.rint(chunk[:, i] / scale) + zero, 0, maxq)
            codes[:, column] = q
            err = (chunk[:, i] - scale * (q - zero)) / u[i, i]
            chunk[:, i:] -= np.outer(err, u[i, i:])
            errors[:, i] = err
        w[:, stop:] -= errors @ upper[start:stop, stop:]
    return Codes(codes=codes, scales=scales.astype(np.float32), zeros=zeros.astype(np.uint8), bits=bits, block=block)


def hessians(
    model: Any,
    *,
    inputs: list[tuple[str, float]],
    folder: Path,
    card: Any,
    tokens: int,
    window: int,
    threads: int,
) -> dict[tuple[str, float], np.ndarray]:
    """``X^T W X`` of each named tensor of the decoder graph ``model`` (a loaded ModelProto, weights in memory) over
    the first ``tokens`` tokens of the calibration text, tokenized by ``folder``'s tokenizer.json, for each
    (tensor, first-token weight) in ``inputs``: W weighs each window's first position that much, the others 1.

    Each forward is ``window`` tokens from position 0, every position's logits kept (the lm_head's input is
    sliced by ``logits_to_keep`` where the graph has it). ``card`` is the folder's model card (symbolic KV shapes).
    """
    import onnx
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from slmops.quantize.ort import MAX_PROTO_BYTES
    from slmops.runtime.decoder import LOGITS_TO_KEEP, OnnxDecoderGraph

    names = sorted({name for name, _ in inputs})
    declared = {o.name for o in model.graph.output}
    added = [name for name in names if name not in declared]
    # the calibration outputs go on ``model`` itself for as long as the session takes to read it, not on a copy
    # (SmolLM2-135M: 540 MB less at the quantize stage's peak)
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in added)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        if model.ByteSize() < MAX_PROTO_BYTES:
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        else:  # saving with external data rewrites the initializers: save a copy, in the caller's throw-away cwd
            probe = onnx.ModelProto()
            probe.CopyFrom(model)
            onnx.save_model(probe, "calibration.onnx", save_as_external_data=True, location="calibration.onnx.data")
            del probe
            session = ort.InferenceSession("calibration.onnx", options, providers=["CPUExecutionProvider"])
    finally:
        del model.graph.output[len(model.graph.output) - len(added) :]
    graph = OnnxDecoderGraph(session, card)
    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(calibration_text()).ids[:tokens]
    required = [arg.name for arg in session.get_inputs()]
    sums: dict[tuple[str, float], np.ndarray] = {}
    for start in range(0, len(ids), window):
        chunk = np.asarray(ids[start : start + window], dtype=np.int64)[None]
        feed = graph.feed(chunk, graph.empty_cache())
        if graph.keeps_logits:
            feed[LOGITS_TO_KEEP] = np.array([0], dtype=np.int64)  # every position: the lm_head's input
        unfed = [name for name in required if name not in feed]
        if unfed:
            raise QuantizeError(f"calibration cannot feed the graph inputs {unfed}; use a recipe without low_bits")
        for name, x in zip(names, session.run(names, feed), strict=True):
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)
            plain = x.T @ x
            for key in inputs:
                if key[0] == name:
                    h = plain + (key[1] - 1.0) * np.outer(x[0], x[0]) if key[1] != 1.0 else plain
                    sums[key] = sums[key] + h if key in sums else h
    logger.info("calibrated %d MatMul inputs on %d tokens", len(names), len(ids))
    return sums


def _scaled_constants(producer: Any, tensor: str, inits: dict[str, Any], k: int) -> list[str] | None:
    """The constants of the node ``producer`` that scale its output ``tensor`` per channel (an RMSNorm's or
    LayerNorm's weight and bias, or a Mul's 1-D factor), so that dividing them by ``s`` divides ``tensor`` by ``s``
    exactly; None where the node is not one of those."""
    if producer is None or producer.output[0] != tensor:  # SkipSimplifiedLayerNormalization's output 3: the sum
        return None
    inputs = list(producer.input)
    if producer.op_type in ("SimplifiedLayerNormalization", "LayerNormalization"):
        names = [name for name in inputs[1:3] if name]
    elif producer.op_type == "SkipSimplifiedLayerNormalization":
        names = inputs[2:3]
    elif producer.op_type == "Mul":  # a decomposed RMSNorm's last step (optimum's export): x * weight
        names = [name for name in inputs if name in inits and list(inits[name].dims) == [k]][:1]
    else:
        return None
    return names if names and all(name in inits and list(inits[name].dims) == [k] for name in names) else None


def fold_activation_scales(
    model: Any,
    targets: dict[str, tuple[Any, Any]],
    hessians: dict[tuple[str, float], np.ndarray],
    *,
    alphas: list[float],
) -> dict[str, Codes]:
    """AWQ-style input scales (Lin et al., 2023) for the GPTQ MatMuls of ``model``, folded into the norm before them.

    For each tensor that low-bit MatMuls read and that a norm (or a per-channel Mul) writes: ``s = rms(x) ** alpha``
    per input channel from the calibration Hessian, the norm's weight divided by ``s`` and every MatMul reading
    the tensor multiplied by it row-wise (exact in fp32), so the channels that carry the most activation get finer
    steps inside their 4-bit blocks. ``alpha`` is chosen per tensor from ``alphas`` by the least GPTQ output error
    ``tr(dW^T H dW)`` of its low-bit MatMuls (0 in ``alphas``: no scaling). ``targets`` maps node name -> (node,
    low_bits entry); the Hessians of the tensors scaled are rescaled in place. Returns the GPTQ codes already
    computed for the scaled weights of the alpha chosen, by node name. Tensors read by anything but MatMuls with
    weights of their own (and Shape), written by another kind of node, or whose norm weight another node reads too
    (an exporter's shared copy of identical weights), are left as they are.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producers = {out: node for node in model.graph.node for out in node.output}
    by_tensor: dict[str, list[tuple[Any, Any]]] = {}
    for node, entry in targets.values():
        by_tensor.setdefault(node.input[0], []).append((node, entry))
    chosen: dict[str, Codes] = {}
    for tensor, low in sorted(by_tensor.items()):
        low.sort(key=lambda pair: pair[0].name)
        k = int(inits[low[0][0].input[1]].dims[0])
        matmuls = [n for n in readers.get(tensor, []) if n.op_type != "Shape"]  # a Shape reads no values
        constants = _scaled_constants(producers.get(tensor), tensor, inits, k)
        if (
            constants is None
            or any(len(readers[name]) != 1 for name in constants)
            or any(n.op_type != "MatMul" or n.input[1] not in inits or len(readers[n.input[1]]) != 1 for n in matmuls)
        ):
            logger.info("%s: not written by a norm alone or not only read by MatMuls; no activation scales", tensor)
            continue
        diagonal = np.diag(hessians[(tensor, low[0][1].first_token_weight)])
        live = diagonal[diagonal > 0]  # a channel never active gets the quietest live one's rms
        rms = np.sqrt(np.where(diagonal > 0, diagonal, live.min() if live.size else 1.0))
        weights = {n.name: numpy_helper.to_array(inits[n.input[1]]).astype(np.float64) for n, _ in low}
        best: tuple[float, float, np.ndarray, dict[str, Codes]] | None = None
        errors = []
        for alpha in alphas:
            s = rms**alpha
            s /= np.sqrt(s.max() * s.min())
            error, codes = 0.0, {}
            for node, entry in low:
                h = hessians[(tensor, entry.first_token_weight)]
                w = weights[node.name]
                codes[node.name] = gptq(
                    w * s[:, None],
                    h / np.outer(s, s),
                    bits=entry.bits,
                    block=entry.block_size,
                    damp=entry.damp,
                    act_order=entry.act_order,
                )
                dw = codes[node.name].dequantized() / s[:, None] - w
                error += float(np.sum((h @ dw) * dw))
            errors.append(error)
            if best is None or error < best[0]:
                best = (error, alpha, s, codes)
        assert best is not None  # alphas is not empty (Recipe validates it)
        _, alpha, s, codes = best
        for name in constants:
            value = numpy_helper.to_array(inits[name])
            inits[name].CopyFrom(numpy_helper.from_array((value / s).astype(value.dtype), name))
        for node in matmuls:
            value = numpy_helper.to_array(inits[node.input[1]])
            inits[node.input[1]].CopyFrom(
                numpy_helper.from_array((value * s[:, None]).astype(value.dtype), node.input[1])
            )
        for key in {(tensor, entry.first_token_weight) for _, entry in low}:
            hessians[key] = hessians[key] / np.outer(s, s)
        chosen.update(codes)
        logger.info("%s: alpha %s, GPTQ output error %s", tensor, alpha, ", ".join(f"{e:.4g}" for e in errors))
    return chosen


def quantize_matching(
    model: Any,
    *,
    exclude: list[str],
    folder: Path,
    card: Any,
    entries: list[Any],
    accuracy_level: int,
    threads: int,
    awq_alphas: list[float] | None = None,
) -> int:
    """Replace every MatMul of ``model`` whose name matches an entry's ``nodes`` (and is not in ``exclude``) by a
    GPTQ MatMulNBits with that entry's options, in place; returns how many. ``entries`` is the recipe's
    ``low_bits``; one calibration pass serves them all. ``awq_alphas``: fold activation-aware input scales into
    the norms before them first (:func:`fold_activation_scales`).

    Raises QuantizeError when a pattern matches no MatMul with a constant weight, or a MatMul matches two.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    candidates = [
        node
        for node in model.graph.node
        if node.op_type == "MatMul"
        and node.name not in exclude
        and node.input[1] in inits
        and len(inits[node.input[1]].dims) == 2
    ]
    targets: dict[str, tuple[Any, Any]] = {}  # node name -> (node, entry)
    for entry in entries:
        rx = re.compile(entry.nodes)
        matched = [node for node in candidates if rx.search(node.name)]
        if not matched:
            names = [n.name for n in model.graph.node if n.op_type == "MatMul"][:5]
            raise QuantizeError(
                f"low_bits.nodes {entry.nodes!r} matches no MatMul with a constant weight (some: {names})"
            )
        for node in matched:
            if node.name in targets:
                raise QuantizeError(
                    f"MatMul {node.name!r} matches two low_bits entries ({targets[node.name][1].nodes!r} and "
                    f"{entry.nodes!r}); make the patterns disjoint"
                )
            targets[node.name] = (node, entry)
    tokens = max(entry.calibration_tokens for entry in entries)  # one per recipe (Recipe validates it)
    h = hessians(
        model,
        inputs=sorted({(node.input[0], entry.first_token_weight) for node, entry in targets.values()}),
        folder=folder,
        card=card,
        tokens=tokens,
        window=min(CALIBRATION_WINDOW, card.context_length),
        threads=threads,
    )
    chosen = fold_activation_scales(model, targets, h, alphas=awq_alphas) if awq_alphas else {}
    replaced, used = {}, set()
    for node, options in targets.values():
        weight = numpy_helper.to_array(inits[node.input[1]])
        codes = chosen.get(node.name) or gptq(
            weight,
            h[(node.input[0], options.first_token_weight)],
            bits=options.bits,
            block=options.block_size,
            damp=options.damp,
            act_order=options.act_order,
        )
        packed, zp = codes.packed()
        base = node.input[1]
        names = [f"{base}_Q{options.bits}G", f"{base}_scales_G", f"{base}_zero_points_G"]
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(packed, names[0]),
                numpy_helper.from_array(codes.scales.reshape(-1), names[1]),
                numpy_helper.from_array(zp.reshape(-1), names[2]),
            ]
        )
        k, n = weight.shape
        replaced[node.name] = helper.make_node(
            "MatMulNBits",
            [node.input[0], *names],
            list(node.output),
            name=f"{node.name}_Q{options.bits}",
            domain="com.microsoft",
            K=k,
            N=n,
            bits=options.bits,
            block_size=options.block_size,
            accuracy_level=accuracy_level,
        )
        used.add(base)
    nodes = [replaced.get(node.name, node) for node in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    still_read = {name for node in model.graph.node for name in node.input}
    kept = [i for i in model.graph.initializer if i.name not in used or i.name in still_read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    logger.info("GPTQ codes for %d MatMuls (%s)", len(replaced), ", ".join(e.nodes for e in entries))
    return len(replaced)
