"""Text deltas from token ids: multi-byte characters, merged tokens and stop strings."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from slmops.runtime.decoder import _text_deltas
from slmops.runtime.tokenizer import Tokenizer

TEXT = "Héllo wörld, naïve café ✓ 日本 — the end."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """A byte-level BPE whose tiny vocab splits non-ASCII characters across several tokens."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["hello world the end"] * 5,
        trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    folder = tmp_path_factory.mktemp("tok")
    tok.save(str(Path(folder) / "tokenizer.json"))
    return Tokenizer(Path(folder))


def test_deltas_never_split_characters_and_join_to_the_text(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(TEXT)
    assert len(ids) > len(TEXT.encode()) // 2  # really byte-split
    deltas = list(_text_deltas(tokenizer, iter(ids), ()))
    assert "".join(deltas) == TEXT
    assert all("\ufffd" not in d for d in deltas)


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ("café", "Héllo wörld, naïve "),
        ("✓", "Héllo wörld, naïve café "),
        ("zzz", TEXT),
        ("end.", "Héllo wörld, naïve café ✓ 日本 — the "),
    ],
)
def test_stop_strings_cut_across_token_boundaries(tokenizer: Tokenizer, stop: str, expected: str) -> None:
    deltas = list(_text_deltas(tokenizer, iter(tokenizer.encode(TEXT)), (stop,)))
    assert "".join(deltas) == expected
    assert all(stop not in d for d in deltas)


def test_earliest_of_several_stops_wins(tokenizer: Tokenizer) -> None:
    out = "".join(_text_deltas(tokenizer, iter(tokenizer.encode(TEXT)), ("the", "wörld")))
    assert out == "Héllo "


def test_chat_template_renders_messages(tmp_path: Path) -> None:
    from tests.support.tiny import CHATML

    tok = HFTokenizer(models.BPE())
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "chat_template.jinja").write_text(CHATML)
    t = Tokenizer(tmp_path)
    text = t.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    from slmops.errors import GenerationParamsError

    with pytest.raises(GenerationParamsError, match="messages\\[0\\]"):
        t.apply_chat_template([{"role": "user"}])
    with pytest.raises(GenerationParamsError, match="empty"):
        t.apply_chat_template([])
