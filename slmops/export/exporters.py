"""Exporters: registered components turning an HF folder into an ONNX artifact folder.

optimum is the general route for every task (which optimum task each slmops task maps to is
the task table's ``optimum_task``); ``genai`` builds fused decoders, ``openelm`` OpenELM.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmops.catalog.schema import Variant
from slmops.errors import ExportError
from slmops.plugins import PluginRegistry
from slmops.runtime.card import ModelCard
from slmops.tasks import GraphKind, get_task

logger = logging.getLogger(__name__)

Exporter = Callable[[Variant, Path, Path], ModelCard]
# exporter name -> exporter; every built-in one is defined in this module
EXPORTERS: PluginRegistry[Exporter] = PluginRegistry("exporter", builtins=(), group="slmops.exporters")
# Files that travel with the graph so the runtime needs nothing else.
SIDECAR_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
)


def copy_sidecars(src: Path, out: Path) -> None:
    """Copy tokenizer/config/pooling files from the HF folder next to the graph."""
    for name in SIDECAR_FILES:
        if (src / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, out / name)


def build_model_card(variant: Variant, src: Path, *, graph: GraphKind) -> ModelCard:
    """Model card from the HF config (eos ids, context) and the catalog (task)."""
    config = json.loads((src / "config.json").read_text())
    gen_path = src / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    eos = gen.get("eos_token_id", config.get("eos_token_id"))
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    head_dim = config.get("head_dim") or (config["hidden_size"] // config["num_attention_heads"])
    kv_heads = config.get("num_key_value_heads", config.get("num_attention_heads"))
    return ModelCard(
        variant=variant.id,
        task=variant.task,
        graph=graph,
        context_length=config.get("max_position_embeddings")
        or config.get("max_context_length")
        or variant.context_length,
        eos_token_ids=eos_ids,
        pad_token_id=config.get("pad_token_id"),
        **get_task(variant.task).impl().card_fields(src, config),
        kv_heads=kv_heads if isinstance(kv_heads, int) else None,  # None: per layer, read from the graph's inputs
        head_dim=head_dim,
        layers=config.get("num_hidden_layers") or config.get("num_transformer_layers"),
    )


@EXPORTERS.register("optimum")
def export_optimum(variant: Variant, src: Path, out: Path) -> ModelCard:
    """optimum's ONNX exporter (the export stage checks the graph against PyTorch afterwards)."""
    import importlib.util

    import torch
    from optimum.exporters.onnx import main_export  # heavy: imported only here

    from slmops.quiet import log_records_dropped, warnings_ignored

    task = get_task(variant.task).optimum_task
    # Without sentence-transformers optimum infers that library from modules.json, warns that it is not
    # installed and falls back to transformers: naming transformers then is the same export, minus the notice.
    library = None if importlib.util.find_spec("sentence_transformers") else "transformers"
    try:
        # optimum always passes from_pretrained(torch_dtype=...), which transformers 4.57 answers with
        # "`torch_dtype` is deprecated! Use `dtype` instead!"; optimum offers no way to pass dtype instead.
        # TracerWarnings are torch.jit's caveats about tracing; every export is checked against PyTorch
        # right after (slmops.export.validate), which is what would catch a trace that went wrong.
        deprecated_dtype = r"^`torch_dtype` is deprecated"
        with (
            log_records_dropped("transformers.configuration_utils", deprecated_dtype),
            log_records_dropped("transformers.modeling_utils", deprecated_dtype),
            warnings_ignored(("", torch.jit.TracerWarning)),
        ):
            main_export(
                model_name_or_path=str(src),
                output=out,
                task=task,
                device="cpu",
                trust_remote_code=variant.remote_code,
                library_name=library,
                do_validation=False,  # it only logs; slmops.export.validate checks every exporter and records the diffs
            )
    except Exception as exc:  # optimum raises bare ValueError/RuntimeError/KeyError
        raise ExportError(f"optimum export of {variant.id} (task {task}) failed: {exc}") from exc
    if not (out / "model.onnx").is_file():
        raise ExportError(f"optimum export of {variant.id} wrote no model.onnx into {out}")
    copy_sidecars(src, out)
    return build_model_card(variant, src, graph=get_task(variant.task).optimum_graph)


# The builder computes the rotary cos/sin caches with torch. With 2 intra-op threads, torch (MKL) now and then
# computes the second thread's half of ``cos`` inaccurately: 1 fresh process in 40 gave |error| 1.5e-4 on those
# rows against 3.6e-8 (tiny Llama, 256 x 16 angles, 2026-12-01), so two builds of one model differed in
# cos_cache. One thread made 60 of 60 exact and the build byte-identical.
BUILDER_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@EXPORTERS.register("genai")
def export_genai(variant: Variant, src: Path, out: Path) -> ModelCard:
    """onnxruntime-genai's model builder: a fused decoder graph (GroupQueryAttention, SkipSimplifiedLayerNorm,
    packed QKV), fp32 here; the quantize stage's recipes apply to it like to any graph.

    Measured on SmolLM2-135M (2 threads): ~310 nodes against ~3,150 for optimum's graph, and 2-3x its
    decode speed. 0.15.2 is the newest builder that runs beside transformers 4.57 (install with --no-deps).
    """
    import os
    import subprocess
    import sys
    import tempfile

    if "genai-decoder" not in get_task(variant.task).graphs:
        raise ExportError(
            f"the genai exporter builds decoders only; {variant.id} is a {variant.task} model: use optimum"
        )
    with tempfile.TemporaryDirectory(prefix="slmops-genai-cache-") as cache:
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(src),
            "-o",
            str(out),
            "-p",
            "fp32",
            "-e",
            "cpu",
            "-c",
            cache,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **BUILDER_THREADS})
    if proc.returncode != 0 or not (out / "model.onnx").is_file():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        hint = (
            " (is onnxruntime-genai==0.15.2 installed? `make setup` installs it)" if "No module named" in tail else ""
        )
        raise ExportError(f"onnxruntime-genai builder failed on {variant.id}{hint}: {tail}")
    keep_last_logits(out / "model.onnx")
    copy_sidecars(src, out)
    return build_model_card(variant, src, graph="genai-decoder")


# ops between the LM head's MatMul and the ``logits`` output that work position by position
_ELEMENTWISE = ("Add", "Mul", "Div", "Tanh", "Where", "Cast")


def keep_last_logits(path: Path) -> None:
    """Give the decoder graph at ``path`` an input ``logits_to_keep`` (int64 [1], HF transformers' name): the LM
    head runs on the last that many positions only. The runtime's prefill asks for 1, the export check and the
    quality gate for every position. The graph is rewritten in place (temp file, then rename); its weights,
    in external data, are untouched.

    The builder's own ``prune_lm_head`` keeps the last position always, which the gate's perplexity (every
    position) and a right-padded batch's prefill (each row's own last position) cannot use. Measured on
    SmolLM2-135M gguf-q4, 128-token prompt: the prefill's peak RSS grows by 2 MB instead of 26.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from slmops.runtime.decoder import LOGITS_TO_KEEP

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if any(i.name == LOGITS_TO_KEEP for i in graph.input):
        return
    producer = {out: node for node in graph.node for out in node.output}
    head = producer.get("logits")
    while head is not None and head.op_type in _ELEMENTWISE:  # back to the MatMul
        head = producer.get(head.input[0])
    if head is None or head.op_type not in ("MatMul", "MatMulNBits"):
        raise ExportError(f"{path}: no MatMul/MatMulNBits LM head found before 'logits'; cannot add {LOGITS_TO_KEEP}")
    hidden, kept = head.input[0], f"{head.name}/{LOGITS_TO_KEEP}/output_0"
    graph.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]))
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.asarray([np.iinfo(np.int64).max], dtype=np.int64), f"{kept}/ends"),
            numpy_helper.from_array(np.asarray([1], dtype=np.int64), f"{kept}/axes"),
        ]
    )
    start = f"{kept}/starts"
    added = [
        helper.make_node("Neg", [LOGITS_TO_KEEP], [start], name=f"{head.name}/{LOGITS_TO_KEEP}/Neg"),
        helper.make_node("Slice", [hidden, start, f"{kept}/ends", f"{kept}/axes"], [kept], name=f"{kept}/Slice"),
    ]
    head.input[0] = kept
    at = list(graph.node).index(head)  # keep the nodes in topological order
    for offset, node in enumerate(added):
        graph.node.insert(at + offset, node)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, str(tmp))
    tmp.replace(path)


@EXPORTERS.register("openelm")
def export_openelm(variant: Variant, src: Path, out: Path) -> ModelCard:
    """OpenELM (per-layer head counts, qk-norm, shared embeddings) through openelm-pytorch, not the Hub's remote code:
    a decoder-with-past graph with optimum's names, checked against PyTorch on a prefill and a cached decode step.
    """
    if not get_task(variant.task).generative:
        raise ExportError(f"the openelm exporter builds causal LMs only; {variant.id} is a {variant.task} model")
    from slmops.export.openelm import export_graph  # heavy (torch): imported only here

    export_graph(src, out)
    copy_sidecars(src, out)
    return build_model_card(variant, src, graph="optimum-decoder")


def openelm_reference(variant: Variant, src: Path, inputs: Any) -> dict[str, Any]:
    """PyTorch logits of OpenELM through openelm-pytorch (no transformers class loads it without remote code)."""
    import numpy as np

    from slmops.export.openelm import load_openelm, torch_step

    model = load_openelm(src)
    return {"logits": np.stack([torch_step(model, ids.tolist(), None)[0] for ids in inputs.arrays["input_ids"]])}


# exporter -> its own PyTorch reference for the export check, where the task's (transformers) cannot load the source
REFERENCES: dict[str, Callable[[Variant, Path, Any], dict[str, Any]]] = {"openelm": openelm_reference}
