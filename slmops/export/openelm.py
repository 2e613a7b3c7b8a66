"""OpenELM to ONNX: a decoder-with-past graph with optimum's input/output names, validated against PyTorch.

OpenELM's modelling code is remote code on the Hub (not in transformers), so optimum cannot load it
offline or without trusting the Hub's Python. The model here is ``openelm-pytorch`` (a pinned PyPI
dependency, MIT), whose module names equal the HF checkpoint's minus the ``transformer.`` prefix; only
``config.json`` and the safetensors weights of the fetched folder are read, never its ``*.py``.

The package's own forward cannot be traced: it applies RoPE only when ``use_kv_cache=True``, from a
TorchScript function whose offset would be frozen into the graph, and it takes no attention mask.
:class:`DecoderWithPast` therefore reuses every package module (projections, q/k RMSNorm, GLU FFN,
norms, shared embedding) and re-states only the attention glue with ``position_ids`` and a mask, as
optimum's model patchers do. The exported graph is checked against the package's own cached forward.

Imported lazily by the ``openelm`` exporter: it imports torch at module level.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slmops.errors import ExportError

logger = logging.getLogger(__name__)

OPSET = 17
VALIDATION_ATOL = 1e-4
# config.json settings openelm-pytorch hard-codes; a checkpoint with any other value would be mis-exported.
REQUIRED_CONFIG: dict[str, object] = {
    "normalize_qk_projections": True,
    "share_input_output_layers": True,
    "ffn_with_glu": True,
    "activation_fn_name": "swish",
    "normalization_layer_name": "rms_norm",
}


def read_config(src: Path) -> dict:
    """The folder's OpenELM config.json; raises ExportError if it is not an OpenELM model openelm-pytorch can run."""
    try:
        config = json.loads((src / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise ExportError(f"{src / 'config.json'} is missing or unreadable ({exc}); re-run `slmops fetch`") from None
    if config.get("model_type") != "openelm":
        raise ExportError(
            f"the openelm exporter exports OpenELM only; {src} has model_type={config.get('model_type')!r}: use optimum"
        )
    for key, want in REQUIRED_CONFIG.items():
        if config.get(key, want) != want:
            raise ExportError(
                f"{src}: config.json {key}={config[key]!r}; openelm-pytorch implements only {key}={want!r}"
            )
    layers = config["num_transformer_layers"]
    for key in ("num_query_heads", "num_kv_heads", "ffn_multipliers"):
        if not isinstance(config.get(key), list) or len(config[key]) != layers:
            raise ExportError(f"{src}: config.json {key}={config.get(key)!r} must list one value per layer ({layers})")
    return config


def load_openelm(src: Path, config: dict | None = None):
    """openelm-pytorch's OpenELM with the folder's per-layer shapes and safetensors weights, in eval mode (fp32)."""
    try:
        from openelm_pytorch.config import ModelConfig
        from openelm_pytorch.openelm import OpenELM
    except ImportError:
        raise ExportError("the openelm exporter needs openelm-pytorch==0.1.0; run `make setup`") from None
    from safetensors.torch import load_file

    config = config or read_config(src)
    mcfg = ModelConfig(
        vocab_size=config["vocab_size"],
        max_context_length=config["max_context_length"],
        num_transformer_layers=config["num_transformer_layers"],
        model_dim=config["model_dim"],
        head_dim=config["head_dim"],
        num_gqa_groups=config.get("num_gqa_groups", 4),
        ffn_dim_divisor=config.get("ffn_dim_divisor", 256),
        rope_freq_constant=config.get("rope_freq_constant", 10000),
        rope_max_length=config.get("rope_max_length", 4096),
    )
    # the checkpoint's per-layer lists win over the package's recomputation from the multipliers
    mcfg.num_query_heads = list(config["num_query_heads"])
    mcfg.num_kv_heads = list(config["num_kv_heads"])
    mcfg.ffn_multipliers = list(config["ffn_multipliers"])
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{src} has no *.safetensors weights; the openelm exporter reads safetensors only")
    state: dict[str, Tensor] = {}
    for path in files:
        state.update({k.removeprefix("transformer."): v.float() for k, v in load_file(path).items()})
    state.pop("lm_head.weight", None)  # shared with token_embeddings (share_input_output_layers)
    model = OpenELM.from_config(mcfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"{src}: weights do not fit the OpenELM config: {str(exc).splitlines()[0]}") from None
    return model.eval()


class DecoderWithPast(nn.Module):
    """(input_ids, attention_mask, position_ids, past k/v per layer) -> (logits, present k/v per layer).

    The cache holds keys after q/k-norm and RoPE, [batch, kv_heads_of_layer, seq, head_dim].
    """

    model: Any  # openelm-pytorch's modules (torch types their attributes as Tensor | Module)
    sin: Tensor
    cos: Tensor

    def __init__(self, model: nn.Module, rope_max_length: int) -> None:
        super().__init__()
        self.model = model
        rope = self.model.layers[0].attn.pos_embedding
        sin, cos = rope._create_sin_cos_theta(
            rope_max_length, rope.dim, base=rope.base, scale=rope.scale, dtype=torch.float32
        )
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("cos", cos, persistent=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *past: Tensor):
        x = self.model.token_embeddings(input_ids)
        q_len, past_len = input_ids.shape[1], past[0].shape[2]
        k_pos = torch.arange(past_len + q_len, device=x.device)
        causal = k_pos[None, :] <= (k_pos[past_len:])[:, None]  # [q, k]
        mask = causal[None, None] & attention_mask.bool()[:, None, None, :]  # [b, 1, q, k]
        sin, cos = self.sin[position_ids][:, None], self.cos[position_ids][:, None]  # [b, 1, q, d/2]
        presents: list[Tensor] = []
        for i, layer in enumerate(self.model.layers):
            attn_out, key, value = self._attention(
                layer.attn, layer.attn_norm(x), mask, sin, cos, past[2 * i], past[2 * i + 1]
            )
            presents += [key, value]
            x = x + attn_out
            x = x + layer.ffn(layer.ffn_norm(x))
        x = self.model.norm(x)
        return (F.linear(x, self.model.token_embeddings.weight), *presents)

    @staticmethod
    def _attention(
        attn: Any, x: Tensor, mask: Tensor, sin: Tensor, cos: Tensor, past_k: Tensor, past_v: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        b, s = x.shape[0], x.shape[1]
        qkv = attn.qkv_proj(x).view(b, s, -1, attn.head_dim).permute(0, 2, 1, 3)
        q, k, v = qkv.split_with_sizes([attn.num_q_heads, attn.num_k_heads, attn.num_v_heads], dim=1)
        q, k = _rope(attn.q_norm(q), sin, cos), _rope(attn.k_norm(k), sin, cos)
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        g = attn.num_groups  # GQA: repeat_interleave on the head axis, as expand + reshape (exports cleanly)
        kr = k[:, :, None].expand(-1, -1, g, -1, -1).reshape(b, attn.num_k_heads * g, -1, attn.head_dim)
        vr = v[:, :, None].expand(-1, -1, g, -1, -1).reshape(b, attn.num_v_heads * g, -1, attn.head_dim)
        out = F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask, scale=attn.scale)
        out = out.permute(0, 2, 1, 3).reshape(b, s, attn.num_q_heads * attn.head_dim)
        return attn.out_proj(out), k, v


def _rope(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """openelm-pytorch's rotation (halves, not interleaved) at explicit positions."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """optimum's decoder names, which the slmops runtime feeds."""
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def export_graph(src: Path, out: Path, *, validate: bool = True) -> float | None:
    """Write ``out/model.onnx`` for the OpenELM folder ``src``; return the validation's max abs logit diff.

    Raises ExportError if the folder is not a supported OpenELM or the graph differs from PyTorch by more
    than ``VALIDATION_ATOL``.
    """
    config = read_config(src)
    model = load_openelm(src, config)
    wrapper = DecoderWithPast(model, config.get("rope_max_length", 4096)).eval()
    layers = len(model.layers)
    inputs, outputs = io_names(layers)
    past = [torch.zeros(1, a.num_k_heads, 3, a.head_dim) for layer in model.layers for a in [layer.attn] for _ in "kv"]
    dummy = (torch.ones(1, 2, dtype=torch.long), torch.ones(1, 5, dtype=torch.long), torch.tensor([[3, 4]]), *past)
    axes = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "past_sequence_length + sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
    }
    axes.update({n: {0: "batch_size", 2: "past_sequence_length"} for n in inputs[3:]})
    axes.update({n: {0: "batch_size", 2: "past_sequence_length + sequence_length"} for n in outputs[1:]})
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                wrapper,
                dummy,
                str(out / "model.onnx"),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # torch.onnx raises a zoo of types
        raise ExportError(f"torch.onnx.export of the OpenELM in {src} failed: {exc}") from exc
    if not validate:
        return None
    diff = validate_graph(model, out / "model.onnx")
    if not diff <= VALIDATION_ATOL:
        raise ExportError(
            f"the OpenELM graph differs from PyTorch by {diff:.2e} (> {VALIDATION_ATOL:.0e}); not exported"
        )
    logger.info("OpenELM export matches PyTorch (max abs logit diff %.2e)", diff)
    return diff


def torch_step(model: nn.Module, ids: list[int], cache: list | None) -> tuple[np.ndarray, list]:
    """openelm-pytorch's own cached forward (its RoPE runs only with ``use_kv_cache=True``): logits [seq, vocab]."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), kv_cache=cache, use_kv_cache=True)
    return out["logits"][0].numpy(), out["kv_cache"]


def validate_graph(model: Any, path: Path, ids: tuple[int, ...] = (1, 5, 9, 2, 7, 3, 11)) -> float:
    """Max abs logit diff between the graph (prefill, then one cached decode step) and the package's forward."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = tuple(i % model.token_embeddings.num_embeddings for i in ids)
    prompt, nxt = list(ids[:-1]), ids[-1]
    ref_prompt, cache = torch_step(model, prompt, None)
    ref_next, _ = torch_step(model, [nxt], cache)
    names = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    shapes = [i.shape for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    feed = {n: np.zeros((1, s[1], 0, s[3]), dtype=np.float32) for n, s in zip(names, shapes, strict=False)}
    n = len(prompt)
    feed.update(
        input_ids=np.array([prompt]), attention_mask=np.ones((1, n), dtype=np.int64), position_ids=np.arange(n)[None]
    )
    logits, *present = session.run(None, feed)
    diff = float(np.abs(logits[0] - ref_prompt).max())
    feed = dict(zip(names, present, strict=False))
    feed.update(
        input_ids=np.array([[nxt]]), attention_mask=np.ones((1, n + 1), dtype=np.int64), position_ids=np.array([[n]])
    )
    logits, *_ = session.run(None, feed)
    return max(diff, float(np.abs(logits[0] - ref_next).max()))
