"""Tokenization and chat templates on HF ``tokenizers`` alone (no transformers at run time)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from slmops.artifacts import file_identity
from slmops.errors import GenerationParamsError, ModelLoadError

logger = logging.getLogger(__name__)


def unpaired_surrogate(text: str) -> int | None:
    """The index of the first lone UTF-16 surrogate in ``text`` (which no tokenizer can encode), else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _check_unicode(text: str, what: str) -> None:
    at = unpaired_surrogate(text)
    if at is not None:
        raise GenerationParamsError(
            f"{what} has an unpaired surrogate ({text[at]!r}) at character {at}; pass valid Unicode text"
        )


def quick_parse_copy(path: Path, cache_dir: Path) -> Path:
    """``path`` (a tokenizer.json), or a copy of it under ``cache_dir`` that HF tokenizers parses faster.

    tokenizers writes a BPE model's merges as pairs (``["a", "b"]``) and still reads the older ``"a b"`` strings,
    which are unambiguous where no token holds a space (ByteLevel BPE writes a space as ``Ġ``). Reading the pairs
    costs more: SmolLM2's tokenizer.json parsed in 0.099-0.120 s (median 0.107) against 0.076-0.111 s (median
    0.080) as strings, and its parse's transient memory peaked 41.5 MB above the start against 21.3, with the same
    ids (8 alternating fresh processes each, 2026-12-08, AMD EPYC VM). So the first open writes the copy (keyed
    by the file's path and identity, as the optimized graph is) and later opens parse it; a tokenizer with nothing
    to rewrite gets a marker instead, so it is read once. A cache that cannot be written leaves ``path`` in use.
    """
    try:
        identity = file_identity(path)
    except OSError:
        return path  # the tokenizer's own open names what is missing
    key = hashlib.sha256(f"{Path(path).resolve()}\n{identity}\nmerges-as-strings".encode()).hexdigest()
    copy, as_is = cache_dir / f"{key[:32]}.json", cache_dir / f"{key[:32]}.as-is"
    if copy.is_file():
        return copy
    if as_is.is_file():
        return path
    try:
        data = json.loads(Path(path).read_bytes())
        merges = data["model"]["merges"] if data.get("model", {}).get("type") == "BPE" else None
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return path  # the tokenizer's own parse names what is wrong with it
    pairs = isinstance(merges, list) and all(
        isinstance(m, list) and len(m) == 2 and all(isinstance(t, str) and " " not in t for t in m) for m in merges
    )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        if not merges or not pairs:
            as_is.touch()
            return path
        data["model"]["merges"] = [" ".join(m) for m in merges]
        fd, tmp = tempfile.mkstemp(prefix=f".{copy.name}.", dir=cache_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, ensure_ascii=False, separators=(",", ":"))
            os.replace(tmp, copy)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        logger.info("cannot cache a quicker copy of %s: %s", path, exc)
        return path
    return copy


def _read_as_is(copy: Path) -> None:
    """Replace a copy that does not parse (another tokenizers, a damaged file) with the marker that makes later
    opens read the original."""
    with contextlib.suppress(OSError):
        copy.with_suffix(".as-is").touch()
        copy.unlink()


class Tokenizer:
    """tokenizer.json plus tokenizer_config.json / chat_template.jinja from an artifact folder.

    ``parse_cache``: a folder for :func:`quick_parse_copy` (``slmops.load`` passes its optimized-graph cache).
    """

    def __init__(self, folder: Path, *, parse_cache: Path | None = None) -> None:
        from tokenizers import Tokenizer as _HFTokenizer

        folder = Path(folder)
        source = folder / "tokenizer.json"
        parsed = source if parse_cache is None else quick_parse_copy(source, parse_cache)
        try:
            try:
                self._tok = _HFTokenizer.from_file(str(parsed))
            except Exception:
                if parsed == source:
                    raise
                logger.warning("the cached copy %s of %s does not parse; reading the original", parsed, source)
                _read_as_is(parsed)
                self._tok = _HFTokenizer.from_file(str(source))
        except Exception as exc:  # tokenizers raises a bare Exception
            raise ModelLoadError(f"{source} cannot be read ({exc}); re-run the export") from None
        config_path = folder / "tokenizer_config.json"
        self.config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template_path = folder / "chat_template.jinja"
        template = template_path.read_text() if template_path.is_file() else self.config.get("chat_template")
        self.chat_template: str | None = template if isinstance(template, str) else None
        self.special_ids = {
            t.id if hasattr(t, "id") else i for i, t in self._tok.get_added_tokens_decoder().items() if t.special
        }
        self._compiled: Any = None  # jinja2 Template, compiled on first use

    def _token(self, key: str) -> str | None:
        value = self.config.get(key)
        if isinstance(value, dict):  # AddedToken serialisation
            value = value.get("content")
        return value

    @property
    def eos_token(self) -> str | None:
        return self._token("eos_token")

    @property
    def bos_token(self) -> str | None:
        return self._token("bos_token")

    @property
    def mask_token(self) -> str | None:
        return self._token("mask_token")

    @property
    def pad_id(self) -> int:
        pad = self._token("pad_token")
        pad_id = self._tok.token_to_id(pad) if pad else None
        return pad_id if pad_id is not None else 0

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; GenerationParamsError for text no tokenizer can encode (a lone surrogate)."""
        _check_unicode(text, "the text")
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(
        self, texts: list[str] | list[tuple[str, str]], *, max_length: int
    ) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
        """Padded ids, attention masks and type ids for a batch (pairs for cross-encoders), truncated to max_length."""
        for i, item in enumerate(texts):
            for part in (item,) if isinstance(item, str) else item:
                _check_unicode(part, f"text {i}")
        tok = self._tok
        tok.enable_truncation(max_length=max_length)
        tok.enable_padding(pad_id=self.pad_id, pad_token=self._token("pad_token") or "[PAD]")
        try:
            encs = tok.encode_batch(list(texts))
        finally:
            tok.no_truncation()
            tok.no_padding()
        return [e.ids for e in encs], [e.attention_mask for e in encs], [e.type_ids for e in encs]

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """Render chat messages with the model's template (Jinja in a sandbox, as transformers does)."""
        if not self.chat_template:
            raise GenerationParamsError("this model has no chat template; pass a plain prompt instead of messages")
        if not messages:
            raise GenerationParamsError("messages is empty; pass at least one {'role': ..., 'content': ...}")
        for i, message in enumerate(messages):
            if (
                not isinstance(message, dict)
                or not isinstance(message.get("role"), str)
                or not isinstance(message.get("content"), str)
            ):
                raise GenerationParamsError(
                    f"messages[{i}]={message!r} must be a mapping with string 'role' and 'content'"
                )
        if self._compiled is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise GenerationParamsError(f"chat template rejected the messages: {message}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._compiled = env.from_string(self.chat_template)
        return self._compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )
