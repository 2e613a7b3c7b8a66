"""Tokenization and chat templates on HF ``tokenizers`` alone (no transformers at run time)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from slmops.errors import GenerationParamsError, ModelLoadError


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


class Tokenizer:
    """tokenizer.json plus tokenizer_config.json / chat_template.jinja from an artifact folder."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer as _HFTokenizer

        folder = Path(folder)
        try:
            self._tok = _HFTokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a bare Exception
            raise ModelLoadError(f"{folder / 'tokenizer.json'} cannot be read ({exc}); re-run the export") from None
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
