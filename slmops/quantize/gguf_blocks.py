"""GGUF quantized blocks mapped onto MatMulNBits: the source's own 4/8-bit weights, no second quantization.

A GGUF model that ships quantized (SmolLM2's offline weights are Q4_1, with a Q8_0
token embedding) is dequantized by transformers for export, so the fp32 graph holds
exactly ``d * q + m`` per block of 32. Re-quantizing those values with RTN rounds the
zero point a second time and costs SmolLM2 +38% perplexity. Here every MatMul weight
is traced back to the GGUF rows it came from (by the bytes of each dequantized row,
so no knowledge of the converter's Q/K permutation or the builder's QKV packing is
needed) and rebuilt from the original codes:

* Q8_0 (``d * q``, q int8): MatMulNBits 8-bit with the default zero point 128. Exact.
* Q4_1 (``d * q + m``, q 0..15): MatMulNBits 4-bit with scale ``d`` and the integer zero
  point ``z = round(-m/d)``, plus the small remainder ``m + d*z`` (|.| <= d/2) that an
  integer zero point cannot hold. MatMulNBits accepts float zero points, but ORT 1.32's
  CPU kernel then dequantizes the whole matrix on every call: 1.1 ms against 37 us for
  a 576x1536 product (measured), so the remainder goes through a side path instead:
  ``(A @ E) @ R`` with ``E`` summing ``A`` over each block of 32 and ``R`` the remainder
  per block and output. That path is exact and costs one bit per weight in fp32 (``remainder="side"``).
  ``remainder="augment"`` instead appends the block sums to the input and the remainder,
  in two 4-bit levels, to each weight row: no extra Add, ~7% more weight bytes, near-exact.
  ``remainder="drop"`` rounds the zero point (what RTN re-quantization does).

Tiny Llama, logits relative to the fp32 graph (fp32 compute): side 2.4e-6, augment 3.4e-4,
drop 0.75. SmolLM2-135M PPL (int8 compute): fp32 14.391, side 14.436, augment 14.507, drop 18.31.

The block sums ``A @ E`` read ``E`` (0/1, [K, K/32]) from memory every step: 12.5 of the 125.7 MB a SmolLM2 token
reads (benchmarks/bandwidth.py). A Reshape to [..., K/32, 32] and a ReduceSum instead read nothing, but decoded
slower: 65-83 against 80-89 tok/s, alternating runs in one session (2026-11-30, load 0.9-1.3).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slmops.errors import QuantizeError

logger = logging.getLogger(__name__)

BLOCK = 32  # Q4_1 and Q8_0 both quantize blocks of 32 along the input dimension


@dataclass(frozen=True)
class RowRef:
    tensor: str
    row: int


@dataclass
class GGUFBlocks:
    """Raw blocks of every Q4_1/Q8_0 tensor of a GGUF file, indexed by the digest of each dequantized row."""

    kinds: dict[str, str]  # tensor name -> "Q4_1" | "Q8_0"
    raw: dict[str, np.ndarray]  # tensor name -> uint8 [rows, blocks, bytes per block]
    rows: dict[bytes, RowRef]

    @classmethod
    def read(cls, path: Path) -> GGUFBlocks:
        """Index ``path``; raises QuantizeError if it is not a GGUF file or holds no Q4_1/Q8_0 tensor."""
        import gguf
        from gguf.quants import dequantize

        try:
            reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # gguf raises ValueError/struct errors on corrupt files
            raise QuantizeError(f"{path} is not a readable GGUF file ({exc}); re-run `slmops fetch`") from exc
        kinds, raw, rows = {}, {}, {}
        for tensor in reader.tensors:
            kind = tensor.tensor_type.name
            if kind not in ("Q4_1", "Q8_0"):
                continue
            data = np.asarray(tensor.data)
            block_bytes = 20 if kind == "Q4_1" else 34
            kinds[tensor.name] = kind
            raw[tensor.name] = data.reshape(data.shape[0], -1, block_bytes)
            for i, row in enumerate(dequantize(data, tensor.tensor_type)):
                rows[_digest(row)] = RowRef(tensor.name, i)
        if not kinds:
            raise QuantizeError(f"{path} holds no Q4_1 or Q8_0 tensor; use a matmul_nbits recipe for this model")
        return cls(kinds=kinds, raw=raw, rows=rows)

    def trace(self, weight: np.ndarray) -> tuple[str, list[RowRef]] | None:
        """The GGUF rows behind each output column of a MatMul weight ``[K, N]``, if all come from one kind."""
        found = [self.rows.get(_digest(weight[:, j])) for j in range(weight.shape[1])]
        refs = [r for r in found if r is not None]
        if len(refs) < len(found):
            return None
        kinds = {self.kinds[r.tensor] for r in refs}
        return (kinds.pop(), refs) if len(kinds) == 1 else None

    def gather(self, refs: list[RowRef]) -> np.ndarray:
        """Raw blocks ``[N, blocks, bytes]`` of the given rows, in order."""
        first = self.raw[refs[0].tensor]
        out = np.empty((len(refs), *first.shape[1:]), dtype=np.uint8)
        for name in {r.tensor for r in refs}:
            idx = [(j, r.row) for j, r in enumerate(refs) if r.tensor == name]
            out[[j for j, _ in idx]] = self.raw[name][[i for _, i in idx]]
        return out


def _digest(row: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(row, dtype=np.float32).tobytes(), digest_size=16).digest()


def q4_1_to_nbits(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 blocks ``[N, nb, 20]`` -> (packed codes [N, nb, 16], scales [N*nb], packed zero points,
    remainder [N, nb])."""
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., 4:20]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # ggml: low nibbles hold elements 0-15, high 16-31
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)  # MatMulNBits: pairs, low nibble first
    with np.errstate(divide="ignore", invalid="ignore"):
        zero = np.where(d != 0, np.clip(np.rint(-m / d), 0, 15), 0).astype(np.uint8)
    remainder = (m.astype(np.float64) + d.astype(np.float64) * zero).astype(np.float32)
    n, nb = zero.shape
    zp = np.zeros((n, (nb + 1) // 2), dtype=np.uint8)
    zp[:, : (nb + 1) // 2] |= zero[:, 0::2]
    zp[:, : nb // 2] |= zero[:, 1::2] << 4
    return packed, d.reshape(-1), zp, remainder


def q8_0_to_nbits(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 blocks ``[N, nb, 34]`` -> (uint8 codes [N, nb, 32] around the default zero point 128, scales [N*nb])."""
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    q = blocks[..., 2:34].view(np.int8).astype(np.int16) + 128
    return q.astype(np.uint8), d.reshape(-1)


def _embedding_gathers(
    graph, blocks: GGUFBlocks, inits: dict, consumers: dict[str, int], new_inits: list
) -> tuple[dict, set[str]]:
    """GatherBlockQuantized replacements for token-embedding Gathers whose table is a Q8_0 tensor.

    The table is an initializer ``[vocab, hidden]`` (optimum) or ``Transpose(lm_head weight)`` (the
    genai builder's tied embedding). Updates ``consumers`` for the inputs the rewrite stops using.
    """
    from onnx import numpy_helper

    from slmops.quantize.tied import gather_block_quantized

    graph_inputs = {i.name for i in graph.input}
    producers = {out: node for node in graph.node for out in node.output}
    replaced, removed = {}, set()
    for node in graph.node:
        if node.op_type != "Gather" or node.input[1] not in graph_inputs:
            continue
        table, transpose = node.input[0], None
        if table not in inits and table in producers and producers[table].op_type == "Transpose":
            transpose = producers[table]
            table = transpose.input[0]
        if table not in inits:
            continue
        weight = numpy_helper.to_array(inits[table])
        columns = weight if transpose is not None else weight.T  # [hidden, vocab]: one column per token
        traced = blocks.trace(columns) if columns.shape[0] % BLOCK == 0 else None
        if traced is None or traced[0] != "Q8_0":
            continue
        codes, scales = q8_0_to_nbits(blocks.gather(traced[1]))
        vocab, hidden = columns.shape[1], columns.shape[0]
        replaced[node.name], tables = gather_block_quantized(
            node,
            codes.reshape(vocab, hidden),
            scales.reshape(vocab, hidden // BLOCK),
            np.full((vocab, hidden // BLOCK), 128, np.uint8),
            block=BLOCK,
            bits=8,
        )
        new_inits += tables
        consumers[node.input[0]] -= 1
        if transpose is not None and consumers[node.input[0]] == 0:
            removed.add(transpose.name)
            consumers[table] -= 1
    return replaced, removed


def _ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


def _augment(
    packed: np.ndarray, scales: np.ndarray, zp: np.ndarray, remainder: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Append ``width`` K positions holding the remainder in two 4-bit levels (coarse + fine), symmetric."""
    n, nb = remainder.shape
    half = width // 2
    levels = []
    rest = np.zeros((n, half), dtype=np.float64)
    rest[:, :nb] = remainder
    for _ in range(2):
        blocks = rest.reshape(n, half // BLOCK, BLOCK)
        scale = np.abs(blocks).max(axis=-1) / 7.0
        q = np.where(
            scale[..., None] > 0, np.clip(np.rint(blocks / np.where(scale > 0, scale, 1)[..., None]), -8, 7), 0
        )
        rest = (blocks - q * scale[..., None]).reshape(n, half)
        levels.append(((q + 8).astype(np.uint8), scale.astype(np.float32)))
    codes = np.concatenate([c for c, _ in levels], axis=1)  # [N, width/32, 32]
    extra_packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    extra_scales = np.concatenate([s for _, s in levels], axis=1)  # [N, width/32]
    nb_total = packed.shape[1] + extra_packed.shape[1]
    old_zero = np.zeros((n, packed.shape[1]), dtype=np.uint8)
    old_zero[:, 0::2] = zp[:, : (packed.shape[1] + 1) // 2] & 0x0F
    old_zero[:, 1::2] = zp[:, : packed.shape[1] // 2] >> 4
    zero = np.concatenate([old_zero, np.full((n, extra_packed.shape[1]), 8, dtype=np.uint8)], axis=1)
    new_zp = np.zeros((n, (nb_total + 1) // 2), dtype=np.uint8)
    new_zp[:, : (nb_total + 1) // 2] |= zero[:, 0::2]
    new_zp[:, : nb_total // 2] |= zero[:, 1::2] << 4
    new_scales = np.concatenate([scales.reshape(n, -1), extra_scales], axis=1).reshape(-1)
    return np.concatenate([packed, extra_packed], axis=1), new_scales, new_zp


def convert(
    src: Path,
    dst: Path,
    gguf_path: Path,
    *,
    accuracy_level: int = 4,
    remainder_mode: str = "side",
    lm_head: bool = True,
    embedding: bool = False,
) -> dict[str, int]:
    """Rewrite the MatMuls of ``src`` whose weights came from ``gguf_path`` as MatMulNBits; save to ``dst``.

    With ``embedding``, a token-embedding Gather whose table came from a Q8_0 tensor becomes an
    exact GatherBlockQuantized (SmolLM2: 113 MB of fp32 table -> 28 MB). Returns counts
    (converted per kind, kept fp32). Raises QuantizeError when no MatMul weight matches the
    GGUF (the graph was not exported from these weights).
    """
    import onnx
    from onnx import helper, numpy_helper

    from slmops.quantize.ort import output_projections, save_onnx

    blocks = GGUFBlocks.read(gguf_path)
    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    counts = {"Q4_1": 0, "Q8_0": 0, "kept": 0, "embedding": 0}
    block_sums: dict[str, str] = {}  # MatMul input -> its per-block sums (shared by consumers of one input)
    new_nodes: list[Any] = []
    new_inits: list[Any] = []
    heads = set(output_projections(model))
    replaced, removed = _embedding_gathers(graph, blocks, inits, consumers, new_inits) if embedding else ({}, set())
    counts["embedding"] = len(replaced)
    for node in graph.node:
        if node.name in removed:
            continue
        if node.name in replaced:
            new_nodes.append(replaced[node.name])
            continue
        weight_name = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight_name is None or weight_name not in inits:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[weight_name])
        traced = blocks.trace(weight) if weight.ndim == 2 and weight.shape[0] % BLOCK == 0 else None
        if traced is None or (node.name in heads and not lm_head):
            counts["kept"] += 1
            new_nodes.append(node)
            continue
        kind, refs = traced
        k, n = weight.shape
        raw = blocks.gather(refs)
        base = node.name.replace("/", "_").strip("_") or weight_name
        attrs = {"K": k, "N": n, "block_size": BLOCK, "accuracy_level": accuracy_level}
        if kind == "Q8_0":
            codes, scales = q8_0_to_nbits(raw)
            inputs = [node.input[0], f"{base}.qweight", f"{base}.scales"]
            new_inits += [numpy_helper.from_array(codes, inputs[1]), numpy_helper.from_array(scales, inputs[2])]
            new_nodes.append(
                helper.make_node(
                    "MatMulNBits", inputs, list(node.output), name=node.name, domain="com.microsoft", bits=8, **attrs
                )
            )
        else:
            packed, scales, zp, remainder = q4_1_to_nbits(raw)
            inputs = [node.input[0], f"{base}.qweight", f"{base}.scales", f"{base}.zero_points"]
            new_inits += [
                numpy_helper.from_array(packed, inputs[1]),
                numpy_helper.from_array(scales, inputs[2]),
                numpy_helper.from_array(zp, inputs[3]),
            ]
            if remainder_mode == "drop":
                new_nodes.append(
                    helper.make_node(
                        "MatMulNBits",
                        inputs,
                        list(node.output),
                        name=node.name,
                        domain="com.microsoft",
                        bits=4,
                        **attrs,
                    )
                )
            elif remainder_mode == "augment":
                nb = k // BLOCK
                width = 2 * _ceil_to(nb, BLOCK)  # two copies of the block sums, each padded to whole blocks
                aug = block_sums.get(node.input[0])
                if aug is None:
                    aug = f"{base}/augmented"
                    indicator = np.zeros((k, width), dtype=np.float32)
                    eye = np.repeat(np.eye(nb, dtype=np.float32), BLOCK, axis=0)
                    indicator[:, :nb] = eye
                    indicator[:, width // 2 : width // 2 + nb] = eye
                    new_inits.append(numpy_helper.from_array(indicator, f"{base}.block_indicator"))
                    new_nodes.append(
                        helper.make_node(
                            "MatMul",
                            [node.input[0], f"{base}.block_indicator"],
                            [f"{base}/block_sums"],
                            name=f"{node.name}/block_sums",
                        )
                    )
                    new_nodes.append(
                        helper.make_node(
                            "Concat", [node.input[0], f"{base}/block_sums"], [aug], name=f"{node.name}/augment", axis=-1
                        )
                    )
                    block_sums[node.input[0]] = aug
                packed, scales, zp = _augment(packed, scales, zp, remainder, width)
                inputs[0] = aug
                replaced = {inputs[1]: packed, inputs[2]: scales, inputs[3]: zp}
                new_inits = [
                    numpy_helper.from_array(replaced[i.name], i.name) if i.name in replaced else i for i in new_inits
                ]
                new_nodes.append(
                    helper.make_node(
                        "MatMulNBits",
                        inputs,
                        list(node.output),
                        name=node.name,
                        domain="com.microsoft",
                        bits=4,
                        **{**attrs, "K": k + width},
                    )
                )
            else:
                main_out = f"{node.output[0]}/nbits"
                new_nodes.append(
                    helper.make_node(
                        "MatMulNBits", inputs, [main_out], name=node.name, domain="com.microsoft", bits=4, **attrs
                    )
                )
                sums = block_sums.get(node.input[0])
                if sums is None:
                    sums = f"{base}/block_sums"
                    indicator = np.repeat(np.eye(k // BLOCK, dtype=np.float32), BLOCK, axis=0)  # [K, nb]
                    new_inits.append(numpy_helper.from_array(indicator, f"{base}.block_indicator"))
                    new_nodes.append(
                        helper.make_node(
                            "MatMul", [node.input[0], f"{base}.block_indicator"], [sums], name=f"{node.name}/block_sums"
                        )
                    )
                    block_sums[node.input[0]] = sums
                new_inits.append(numpy_helper.from_array(np.ascontiguousarray(remainder.T), f"{base}.remainder"))
                new_nodes.append(
                    helper.make_node(
                        "MatMul", [sums, f"{base}.remainder"], [f"{node.output[0]}/rem"], name=f"{node.name}/remainder"
                    )
                )
                new_nodes.append(
                    helper.make_node(
                        "Add", [main_out, f"{node.output[0]}/rem"], list(node.output), name=f"{node.name}/add_remainder"
                    )
                )
        counts[kind] += 1
        consumers[weight_name] -= 1
    if counts["Q4_1"] + counts["Q8_0"] == 0:
        raise QuantizeError(
            f"no MatMul weight of {src} matches a Q4_1/Q8_0 row of {gguf_path.name}; "
            "the graph was not exported from this GGUF: use a matmul_nbits recipe"
        )
    dropped = {name for name in inits if consumers.get(name, 1) == 0}  # weights no node reads any more
    del graph.node[:]
    graph.node.extend(new_nodes)
    kept = [i for i in graph.initializer if i.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    save_onnx(model, dst)
    logger.info(
        "mapped GGUF blocks onto %d MatMulNBits (Q4_1 %d, Q8_0 %d), kept %d MatMul fp32",
        counts["Q4_1"] + counts["Q8_0"],
        counts["Q4_1"],
        counts["Q8_0"],
        counts["kept"],
    )
    return counts
