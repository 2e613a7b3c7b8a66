"""A tied token embedding gathered from the quantized lm_head (GatherBlockQuantized) instead of an fp32 copy.

The onnxruntime-genai builder ties SmolLM2's embedding to its lm_head: the Gather reads
``Transpose(lm_head weight)``. Once ORT's MatMulNBits quantizer has replaced the lm_head
MatMul, that fp32 weight survives only for the Transpose: 113 MB of SmolLM2's 258 MB wo-int8
graph. Here the Gather reads the lm_head's own codes, scales and zero points instead, so the
embedding holds exactly the lm_head's quantized values and the fp32 table leaves the graph.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def gather_block_quantized(
    gather,
    codes: np.ndarray,
    scales: np.ndarray,
    zero: np.ndarray,
    *,  # noqa: ANN001
    block: int,
    bits: int,
) -> tuple:
    """A GatherBlockQuantized taking ``gather``'s place (same ids and output), and its three tables
    (codes ``[vocab, hidden*bits/8]``, scales and zero points ``[vocab, blocks]``, packed like the codes)."""
    from onnx import helper, numpy_helper

    base = gather.name.replace("/", "_").strip("_")
    names = [f"{base}.qtable", f"{base}.scales", f"{base}.zero_points"]
    tables = [numpy_helper.from_array(array, name) for array, name in zip((codes, scales, zero), names, strict=False)]
    node = helper.make_node(
        "GatherBlockQuantized",
        [names[0], gather.input[1], *names[1:]],
        list(gather.output),
        name=gather.name,
        domain="com.microsoft",
        gather_axis=0,
        quantize_axis=1,
        block_size=block,
        bits=bits,
    )
    return node, tables


def gather_from_quantized_head(model) -> bool:  # noqa: ANN001 - onnx.ModelProto, edited in place
    """Point the tied embedding Gather at the quantized lm_head; returns False when the graph has no such pair."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    producers = {out: node for node in graph.node for out in node.output}
    heads = [n for n in graph.node if n.op_type == "MatMulNBits" and n.output[0] in outputs]
    gathers = [
        n
        for n in graph.node
        if n.op_type == "Gather"
        and n.input[1] in {i.name for i in graph.input}
        and n.input[0] in producers
        and producers[n.input[0]].op_type == "Transpose"
    ]
    if len(heads) != 1 or len(gathers) != 1:
        return False
    head, gather = heads[0], gathers[0]
    transpose = producers[gather.input[0]]
    weight = transpose.input[0]
    if not head.input[1].startswith(weight + "_Q") or weight not in inits:  # the head was quantized from this table
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    n, k, bits, block = attrs["N"], attrs["K"], attrs["bits"], attrs["block_size"]
    if k % block or (bits == 4 and block % 2):
        return False
    blocks = k // block
    codes = numpy_helper.to_array(inits[head.input[1]]).reshape(n, -1)  # [N, K*bits/8]: rows are tokens
    scales = numpy_helper.to_array(inits[head.input[2]]).reshape(n, blocks)
    if len(head.input) > 3 and head.input[3]:
        zero = numpy_helper.to_array(inits[head.input[3]]).reshape(n, -1)
    else:  # symmetric: MatMulNBits' default zero point 2^(bits-1), packed like the data
        mid = 1 << (bits - 1)
        zero = np.full(
            (n, blocks if bits == 8 else (blocks + 1) // 2), mid if bits == 8 else mid | (mid << 4), np.uint8
        )
    replacement, tables = gather_block_quantized(gather, codes, scales, zero, block=block, bits=bits)
    graph.initializer.extend(tables)
    nodes = [replacement if node is gather else node for node in graph.node if node is not transpose]
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(weight in node.input for node in graph.node):
        kept = [i for i in graph.initializer if i.name != weight]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    logger.info("tied embedding now gathers the %d-bit lm_head (%s) instead of the fp32 table", bits, head.name)
    return True
