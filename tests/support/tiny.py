"""Tiny random models in Hugging Face format, built in a few seconds for tests.

A 2-layer Llama (GQA, tied embeddings, byte-level BPE, ChatML template), a 2-layer BERT
laid out as a sentence-transformers folder (mean pooling + Normalize), and BERT heads for
reranking (sequence classification) and fill-mask (masked LM).
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    from slmops.evaluate.metrics import eval_sentences, eval_text

    data = eval_sentences()
    return eval_text().splitlines() + data["queries"] + data["documents"] + ["héllo wörld — ünïcode ✓ 日本語"]


def build_tiny_llama(out: Path) -> dict:
    """Save a tiny LlamaForCausalLM + tokenizer into ``out``; return its catalog numbers."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        _corpus(), trainers.BpeTrainer(vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    hf_tok.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.2,
        bos_token_id=hf_tok.convert_tokens_to_ids("<|im_start|>"), eos_token_id=hf_tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=hf_tok.convert_tokens_to_ids("<|im_end|>"),
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    hf_tok.save_pretrained(out)
    return {
        "task": "causal-lm", "architecture": "LlamaForCausalLM", "params": model.num_parameters(), "layers": 2,
        "hidden_size": 64, "attention_heads": 4, "kv_heads": 2, "head_dim": 16, "vocab_size": len(hf_tok),
        "context_length": 256, "tie_word_embeddings": True, "capabilities": ["text_generation", "chat"],
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
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(hf_tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, pad_token_id=0,
    )
    model = BertModel(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    hf_tok.save_pretrained(out)
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    return {
        "task": "sentence-embedding", "architecture": "BertModel", "params": model.num_parameters(), "layers": 2,
        "hidden_size": 32, "attention_heads": 2, "kv_heads": 2, "head_dim": 16, "vocab_size": len(hf_tok),
        "context_length": 128, "capabilities": [],
    }


def build_tiny_cross_encoder(out: Path) -> dict:
    """Save a tiny BertForSequenceClassification (1 label, as ms-marco cross-encoders); return catalog numbers."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    facts = build_tiny_bert(out)  # the tokenizer and a BERT body
    for name in ("modules.json", "sentence_bert_config.json"):
        (out / name).unlink()
    import shutil

    shutil.rmtree(out / "1_Pooling")
    torch.manual_seed(1)
    config = BertConfig.from_pretrained(out)
    config.num_labels = 1
    config.architectures = ["BertForSequenceClassification"]
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    return {**facts, "task": "cross-encoder", "architecture": "BertForSequenceClassification",
            "params": model.num_parameters()}


def build_tiny_masked_lm(out: Path) -> dict:
    """Save a tiny BertForMaskedLM (tied decoder, as MiniLM's) with the [MASK] tokenizer; return catalog numbers."""
    import shutil

    import torch
    from transformers import BertConfig, BertForMaskedLM

    facts = build_tiny_bert(out)  # the tokenizer and a BERT body
    for name in ("modules.json", "sentence_bert_config.json"):
        (out / name).unlink()
    shutil.rmtree(out / "1_Pooling")
    torch.manual_seed(2)
    config = BertConfig.from_pretrained(out)
    config.architectures = ["BertForMaskedLM"]
    config.initializer_range = 0.2  # spread the random logits so top-k orders are not near-ties
    model = BertForMaskedLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    return {**facts, "task": "fill-mask", "architecture": "BertForMaskedLM", "params": model.num_parameters()}


def write_configs(config_dir: Path, *, variants: dict[str, dict], repo_prefix: str = "tiny") -> None:
    """A complete configs/ folder for the tiny variants (recipes and gates copied from the real configs)."""
    import shutil

    import yaml

    real = Path(__file__).resolve().parents[2] / "configs"
    config_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(real / "recipes.yaml", config_dir / "recipes.yaml")
    shutil.copy(real / "gates.yaml", config_dir / "gates.yaml")
    shutil.copy(real / "devices.yaml", config_dir / "devices.yaml")
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
        "selection": {vid: {"source": "hub", "exporter": "optimum", "recipes": recipes[f["task"]]} for vid, f in variants.items()},
        "benchmark": {"profiles": ["cpu-1t", "cuda"], "prompt_tokens": [8, 16], "headline_prompt_tokens": 16,
                      "new_tokens": 8, "warmup": 1, "repeats": 2, "batch_sizes": [1, 8], "items": 32},
    }
    (config_dir / "pipeline.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    usecases = {"usecases": {
        "chat-test": {"task": "causal-lm", "device": "cpu", "capabilities": ["chat"], "max_memory_mb": 4096, "objective": "decode_speed"},
        "embed-test": {"task": "sentence-embedding", "device": "cpu", "max_memory_mb": 4096, "objective": "throughput"},
        "tiny-memory": {"task": "causal-lm", "device": "cpu", "max_memory_mb": 1, "objective": "decode_speed"},
    }}
    (config_dir / "usecases.yaml").write_text(yaml.safe_dump(usecases, sort_keys=False))
