"""The tokenizer.json copy that HF tokenizers parses faster (slmops.runtime.tokenizer.quick_parse_copy)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers

from slmops.errors import ModelLoadError
from slmops.runtime.tokenizer import Tokenizer, quick_parse_copy

TEXTS = [
    "The capital of France is Paris, and its river is the Seine.",
    "<|im_start|>user\nhéllo wörld — ünïcode ✓ 日本語<|im_end|>\n<|im_start|>assistant\n",
    "  spaces,\ttabs and\nnew lines  ",
]


@pytest.fixture
def bpe_folder(tmp_path: Path) -> Path:
    """A byte-level BPE tokenizer.json as tokenizers writes it today: merges as pairs, ChatML specials."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        TEXTS * 20,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    folder = tmp_path / "model"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    merges = json.loads((folder / "tokenizer.json").read_text())["model"]["merges"]
    assert merges and all(isinstance(m, list) for m in merges)  # the format the copy rewrites
    return folder


def test_the_copy_writes_merges_as_strings_and_encodes_and_decodes_the_same(bpe_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = bpe_folder / "tokenizer.json"
    copy = quick_parse_copy(source, cache)
    assert copy.parent == cache and copy != source
    merges = json.loads(copy.read_text())["model"]["merges"]
    assert merges == [" ".join(m) for m in json.loads(source.read_text())["model"]["merges"]]
    plain, quick = Tokenizer(bpe_folder), Tokenizer(bpe_folder, parse_cache=cache)
    for text in TEXTS:
        ids = plain.encode(text)
        assert quick.encode(text) == ids
        assert quick.decode(ids, skip_special_tokens=False) == plain.decode(ids, skip_special_tokens=False)
    assert quick.special_ids == plain.special_ids and quick.vocab_size == plain.vocab_size
    assert [p.name for p in cache.iterdir()] == [copy.name]  # no temp file left


def test_later_opens_reuse_the_copy_and_a_changed_source_gets_a_new_one(bpe_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = bpe_folder / "tokenizer.json"
    first = quick_parse_copy(source, cache)
    written = first.stat().st_mtime_ns
    assert quick_parse_copy(source, cache) == first and first.stat().st_mtime_ns == written
    fresh = source.with_name("fresh.json")
    fresh.write_text(source.read_text())
    fresh.replace(source)  # same content, a new file (a new identity): the copy is made again
    second = quick_parse_copy(source, cache)
    assert second != first and second.read_text() == first.read_text()


def test_a_tokenizer_with_nothing_to_rewrite_is_read_as_it_is_and_checked_once(tmp_path: Path) -> None:
    tok = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(TEXTS * 20, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]"]))
    source = tmp_path / "tokenizer.json"
    tok.save(str(source))
    cache = tmp_path / "cache"
    assert quick_parse_copy(source, cache) == source
    assert [p.suffix for p in cache.iterdir()] == [".as-is"]  # the next open does not parse it to find out
    assert quick_parse_copy(source, cache) == source


def test_merges_holding_a_space_are_left_as_pairs(tmp_path: Path) -> None:
    source = tmp_path / "tokenizer.json"
    source.write_text(json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": [["a b", "c"], ["d", "e"]]}}))
    assert quick_parse_copy(source, tmp_path / "cache") == source  # "a b c" would read back as another merge


def test_an_unwritable_cache_leaves_the_original_in_use(bpe_folder: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert quick_parse_copy(bpe_folder / "tokenizer.json", blocked / "cache") == bpe_folder / "tokenizer.json"
    assert Tokenizer(bpe_folder, parse_cache=blocked / "cache").encode(TEXTS[0]) == Tokenizer(bpe_folder).encode(
        TEXTS[0]
    )


def test_a_damaged_copy_is_dropped_and_the_original_read(
    bpe_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    copy = quick_parse_copy(bpe_folder / "tokenizer.json", cache)
    copy.write_text('{"model": ')
    with caplog.at_level(logging.WARNING, logger="slmops.runtime.tokenizer"):
        tok = Tokenizer(bpe_folder, parse_cache=cache)
    assert tok.encode(TEXTS[0]) == Tokenizer(bpe_folder).encode(TEXTS[0])
    assert "does not parse; reading the original" in caplog.text and not copy.exists()
    assert quick_parse_copy(bpe_folder / "tokenizer.json", cache) == bpe_folder / "tokenizer.json"  # not again


def test_a_corrupt_tokenizer_is_still_named_with_the_cache_in_use(bpe_folder: Path, tmp_path: Path) -> None:
    (bpe_folder / "tokenizer.json").write_text('{"model": {"type": "BPE", "merges": [')
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json cannot be read .*re-run the export"):
        Tokenizer(bpe_folder, parse_cache=tmp_path / "cache")


def test_a_missing_tokenizer_is_named_with_the_cache_in_use(tmp_path: Path) -> None:
    assert quick_parse_copy(tmp_path / "tokenizer.json", tmp_path / "cache") == tmp_path / "tokenizer.json"
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json cannot be read"):
        Tokenizer(tmp_path, parse_cache=tmp_path / "cache")
