"""Tiny random models in Hugging Face format, built in a few seconds for tests.

A 2-layer Llama (GQA, tied embeddings, byte-level BPE, ChatML template), a 3-layer OpenELM
(openelm-pytorch, per-layer head counts, same tokenizer), a 2-layer BERT laid out as a
sentence-transformers folder (mean pooling + Normalize), and BERT heads for reranking
(sequence classification) and fill-mask (masked LM).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slmops.catalog.schema import Variant

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    from slmops.taskdefs.base import eval_sentences, eval_text

    data = eval_sentences()
    return eval_text().splitlines() + data["queries"] + data["documents"] + ["héllo wörld — ünïcode ✓ 日本語"]


def _tiny_bpe_tokenizer():
    """A byte-level BPE tokenizer (400 tokens) with ChatML specials and template, trained on the eval corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        _corpus(),
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    hf_tok.chat_template = CHATML
    return hf_tok


def as_fetched(src: Path, vid: str, facts: dict, *, source: str = "test", license: str = "apache-2.0"):  # noqa: A002
    """Mark ``src`` as a finished fetch (manifest) and return the catalog Variant for it."""
    from slmops.artifacts import write_manifest
    from slmops.catalog.schema import Variant

    write_manifest(src, stage="fetch", variant=vid, source=source)
    return Variant(id=vid, family="tiny", repo_id=f"tiny/{vid}", revision="main", license=license, **facts)


def from_folder(folder: Path, facts: dict) -> Callable[[Path], dict]:
    """A builder for :func:`build_candidates` that copies an already built tiny model (e.g. a session fixture's)."""

    def build(out: Path) -> dict:
        shutil.copytree(folder, out)
        return facts

    return build


def build_candidates(
    root: Path, vid: str, build: Callable[[Path], dict], *, recipes: Sequence[str] = ("fp32", "dyn-int8-pc")
) -> Variant:
    """``build`` a tiny model into ``root/fetch``, export it (optimum) to ``root/export`` and quantize it with each
    recipe of configs/recipes.yaml into ``root/cand/<recipe>``; return its catalog Variant."""
    from slmops.export import export
    from slmops.quantize import load_recipes, quantize

    src = root / "fetch"
    variant = as_fetched(src, vid, build(src))
    export(variant, src=src, out=root / "export")
    known = load_recipes(CONFIGS / "recipes.yaml")
    for name in recipes:
        quantize(variant, known[name], src=root / "export", out=root / "cand" / name)
    return variant


def build_tiny_llama(out: Path) -> dict:
    """Save a tiny LlamaForCausalLM + tokenizer into ``out``; return its catalog numbers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_tok = _tiny_bpe_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=hf_tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=hf_tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=hf_tok.convert_tokens_to_ids("<|im_end|>"),
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    hf_tok.save_pretrained(out)
    return {
        "task": "causal-lm",
        "architecture": "LlamaForCausalLM",
        "params": model.num_parameters(),
        "layers": 2,
        "hidden_size": 64,
        "attention_heads": 4,
        "kv_heads": 2,
        "head_dim": 16,
        "vocab_size": len(hf_tok),
        "context_length": 256,
        "tie_word_embeddings": True,
        "capabilities": ["text_generation", "chat"],
    }


def build_tiny_openelm(out: Path) -> dict:
    """Save a tiny random OpenELM in the Hub's layout (config.json, ``transformer.*`` safetensors) + tokenizer.

    The model is openelm-pytorch's. 3 layers with layer-wise scaling: query heads [2, 4, 4], kv heads [1, 2, 2],
    FFN widths [32, 160, 256]; q/k RMSNorm weights are randomised so the qk-norm matters.
    """
    import torch
    from openelm_pytorch.config import ModelConfig
    from openelm_pytorch.openelm import OpenELM
    from safetensors.torch import save_file

    hf_tok = _tiny_bpe_tokenizer()
    bos, eos = hf_tok.convert_tokens_to_ids("<|im_start|>"), hf_tok.convert_tokens_to_ids("<|im_end|>")
    mcfg = ModelConfig(
        vocab_size=len(hf_tok),
        max_context_length=256,
        num_transformer_layers=3,
        model_dim=64,
        head_dim=16,
        num_gqa_groups=2,
        ffn_dim_divisor=32,
        qkv_multipliers=(0.5, 1.0),
        ffn_multipliers=(0.5, 4.0),
        rope_max_length=512,
    )
    torch.manual_seed(0)
    model = OpenELM.from_config(mcfg).eval()
    model.reset_parameters()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {f"transformer.{k}": v.contiguous() for k, v in model.state_dict().items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    config = {  # the keys and layout of apple/OpenELM-*'s config.json
        "activation_fn_name": "swish",
        "architectures": ["OpenELMForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_openelm.OpenELMConfig",
            "AutoModelForCausalLM": "modeling_openelm.OpenELMForCausalLM",
        },
        "bos_token_id": bos,
        "eos_token_id": eos,
        "ffn_dim_divisor": 32,
        "ffn_multipliers": mcfg.ffn_multipliers,
        "ffn_with_glu": True,
        "head_dim": 16,
        "initializer_range": 0.02,
        "max_context_length": 256,
        "model_dim": 64,
        "model_type": "openelm",
        "normalization_layer_name": "rms_norm",
        "normalize_qk_projections": True,
        "num_gqa_groups": 2,
        "num_kv_heads": mcfg.num_kv_heads,
        "num_query_heads": mcfg.num_query_heads,
        "num_transformer_layers": 3,
        "qkv_multipliers": [0.5, 1.0],
        "rope_freq_constant": 10000,
        "rope_max_length": 512,
        "share_input_output_layers": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": len(hf_tok),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}))
    hf_tok.save_pretrained(out)
    return {
        "task": "causal-lm",
        "architecture": "OpenELMForCausalLM",
        "params": sum(p.numel() for p in model.parameters()),
        "layers": 3,
        "hidden_size": 64,
        "attention_heads": max(mcfg.num_query_heads),
        "kv_heads": max(mcfg.num_kv_heads),
        "head_dim": 16,
        "vocab_size": len(hf_tok),
        "context_length": 256,
        "tie_word_embeddings": True,
        "capabilities": ["text_generation"],
        "remote_code": True,
        "exporter": "openelm",
    }


def build_tiny_bert(out: Path) -> dict:
    """Save a tiny BertModel + WordPiece tokenizer as a sentence-transformers folder; return catalog numbers."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=500, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(hf_tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    model = BertModel(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    hf_tok.save_pretrained(out)
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    )
    (out / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    return {
        "task": "sentence-embedding",
        "architecture": "BertModel",
        "params": model.num_parameters(),
        "layers": 2,
        "hidden_size": 32,
        "attention_heads": 2,
        "kv_heads": 2,
        "head_dim": 16,
        "vocab_size": len(hf_tok),
        "context_length": 128,
        "capabilities": [],
    }


def _bert_with_head(out: Path, head: str, *, seed: int, **config: object):  # noqa: ANN202 - a transformers model
    """The tiny BERT's tokenizer and body under ``out`` as a plain HF folder with the ``head`` class on top."""
    import torch
    import transformers

    facts = build_tiny_bert(out)
    for name in ("modules.json", "sentence_bert_config.json"):
        (out / name).unlink()
    shutil.rmtree(out / "1_Pooling")
    torch.manual_seed(seed)
    bert_config = transformers.BertConfig.from_pretrained(out)
    bert_config.architectures = [head]
    for key, value in config.items():
        setattr(bert_config, key, value)
    model = getattr(transformers, head)(bert_config).eval()
    model.save_pretrained(out, safe_serialization=True)
    return facts, model


def build_tiny_cross_encoder(out: Path) -> dict:
    """Save a tiny BertForSequenceClassification (1 label, as ms-marco cross-encoders); return catalog numbers."""
    facts, model = _bert_with_head(out, "BertForSequenceClassification", seed=1, num_labels=1)
    return {
        **facts,
        "task": "cross-encoder",
        "architecture": "BertForSequenceClassification",
        "params": model.num_parameters(),
    }


def build_tiny_masked_lm(out: Path) -> dict:
    """Save a tiny BertForMaskedLM (tied decoder, as MiniLM's) with the [MASK] tokenizer; return catalog numbers."""
    # initializer_range 0.2 spreads the random logits so top-k orders are not near-ties
    facts, model = _bert_with_head(out, "BertForMaskedLM", seed=2, initializer_range=0.2)
    return {**facts, "task": "fill-mask", "architecture": "BertForMaskedLM", "params": model.num_parameters()}


def write_configs(config_dir: Path, *, variants: dict[str, dict], repo_prefix: str = "tiny") -> None:
    """A complete configs/ folder for the tiny variants (recipes and gates copied from the real configs)."""
    import yaml

    config_dir.mkdir(parents=True, exist_ok=True)
    for name in ("recipes.yaml", "gates.yaml", "devices.yaml"):
        shutil.copy(CONFIGS / name, config_dir / name)
    catalog = {
        "families": {"tiny": {"display_name": "Tiny", "publisher": "tests", "defaults": {"license": "apache-2.0"}}},
        "variants": {
            vid: {"family": "tiny", "repo_id": f"{repo_prefix}/{vid}", "revision": "main", **facts}
            for vid, facts in variants.items()
        },
    }
    (config_dir / "catalog.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    recipes = {"causal-lm": ["fp32", "wo-int8", "wo-int4"], "sentence-embedding": ["fp32", "dyn-int8-pc"]}
    pipeline = {
        "device": "cpu",
        "reference_recipe": "fp32",
        "selection": {
            vid: {"source": "hub", "exporter": "optimum", "recipes": recipes[f["task"]]} for vid, f in variants.items()
        },
        "benchmark": {
            "profiles": ["cpu-1t", "cuda"],
            "prompt_tokens": [8, 16],
            "headline_prompt_tokens": 16,
            "new_tokens": 8,
            "warmup": 1,
            "repeats": 2,
            "batch_sizes": [1, 8],
            "items": 32,
            "busy_retries": 0,  # test machines are shared: flag a busy run rather than wait to measure it again
        },
    }
    (config_dir / "pipeline.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    usecases = {
        "usecases": {
            "chat-test": {
                "task": "causal-lm",
                "device": "cpu",
                "capabilities": ["chat"],
                "max_memory_mb": 4096,
                "objective": "decode_speed",
            },
            "embed-test": {
                "task": "sentence-embedding",
                "device": "cpu",
                "max_memory_mb": 4096,
                "objective": "throughput",
            },
            "tiny-memory": {"task": "causal-lm", "device": "cpu", "max_memory_mb": 1, "objective": "decode_speed"},
        }
    }
    (config_dir / "usecases.yaml").write_text(yaml.safe_dump(usecases, sort_keys=False))


def build_tiny_gguf(hf_folder: Path, path: Path) -> None:
    """Write the tiny Llama of ``hf_folder`` as a GGUF the way llama.cpp's converter does (Q/K rows permuted),
    with Q4_1 linear weights, a Q8_0 token embedding and f32 norms, plus the tokenizer (gpt2 BPE)."""
    import gguf
    import numpy as np
    from gguf.quants import quantize
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    config = json.loads((hf_folder / "config.json").read_text())
    weights = load_file(str(hf_folder / "model.safetensors"))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]

    def permute(w: np.ndarray, n_head: int) -> np.ndarray:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_vocab_size(config["vocab_size"])
    tok = AutoTokenizer.from_pretrained(hf_folder)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    merges = json.loads((hf_folder / "tokenizer.json").read_text())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([3 if t in tok.all_special_tokens else 1 for t, _ in vocab])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_bos_token_id(config["bos_token_id"])
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    q41, q80 = gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0
    embed = weights["model.embed_tokens.weight"].astype(np.float32)
    writer.add_tensor("token_embd.weight", quantize(embed, q80), raw_dtype=q80)
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"].astype(np.float32))
    for i in range(config["num_hidden_layers"]):
        for hf, gg in names.items():
            w = weights[f"model.layers.{i}.{hf}.weight"].astype(np.float32)
            if hf.endswith("norm"):
                writer.add_tensor(f"blk.{i}.{gg}.weight", w)
                continue
            if hf == "self_attn.q_proj":
                w = permute(w, heads)
            elif hf == "self_attn.k_proj":
                w = permute(w, kv_heads)
            writer.add_tensor(f"blk.{i}.{gg}.weight", quantize(w, q41), raw_dtype=q41)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
