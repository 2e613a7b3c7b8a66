"""Runtime records (slmops.records): lax parsing as pydantic's, every problem named with its value, exact JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from slmops.artifacts import FileEntry, Manifest, read_manifest, write_manifest
from slmops.errors import IntegrityError, ModelLoadError, RecordError, describe_validation
from slmops.runtime.card import MODEL_CARD_NAME, ModelCard, Pooling, read_model_card
from slmops.runtime.params import GenerationParams

# A card as pydantic's model_dump_json(indent=2) wrote it: registered versions carry such files, and the bytes
# are hashed into manifests and dvc.lock, so a record must write the same bytes.
PYDANTIC_CARD = """{
  "variant": "all-minilm-l6-v2",
  "task": "sentence-embedding",
  "graph": "optimum-encoder",
  "onnx_file": "model.onnx",
  "precision": "fp32",
  "recipe": "fp32",
  "context_length": 512,
  "eos_token_ids": [],
  "pad_token_id": 0,
  "pooling": {
    "mode": "mean",
    "normalize": true
  },
  "num_labels": null,
  "kv_heads": 12,
  "head_dim": 32,
  "layers": 6
}
"""


def test_strings_are_parsed_as_the_environment_gives_them() -> None:
    params = GenerationParams(max_tokens="12", temperature="0.5", ignore_eos="yes", seed=7.0)
    assert (params.max_tokens, params.temperature, params.ignore_eos, params.seed) == (12, 0.5, True, 7)
    assert isinstance(params.temperature, float)
    assert GenerationParams(stop=["a", "b"], stop_token_ids=[3]).stop == ("a", "b")


@pytest.mark.parametrize(
    ("options", "problems"),
    [
        ({"max_tokens": 2.5}, ["max_tokens=2.5: must be an integer"]),
        ({"max_tokens": True}, ["max_tokens=True: must be an integer"]),
        (
            {"top_p": "high", "top_k": -2},
            ["top_k=-2: must be greater than or equal to 0", "top_p='high': must be a number"],
        ),
        ({"truncate": "maybe"}, ["truncate='maybe': must be a boolean"]),
        ({"stop_token_ids": "3"}, ["stop_token_ids='3': must be a list"]),
        ({"seed": 2**64}, [f"seed={2**64}: must be less than {2**64}"]),
    ],
)
def test_every_bad_value_is_named_with_its_value(options: dict, problems: list[str]) -> None:
    with pytest.raises(RecordError) as info:
        GenerationParams(**options)
    text = describe_validation(info.value)
    for problem in problems:
        assert problem in text
    assert info.value.error_count() == len(problems)


def test_unknown_and_missing_fields_are_named() -> None:
    with pytest.raises(RecordError) as info:
        ModelCard.from_dict({"variant": "v", "task": "causal-lm", "grpah": "genai-decoder"})
    text = describe_validation(info.value, known=ModelCard.field_names())
    assert "unknown option 'grpah'" in text and "graph is required" in text and "context_length is required" in text


def test_nested_records_and_literals_report_the_path() -> None:
    card = json.loads(PYDANTIC_CARD)
    with pytest.raises(RecordError, match=r"pooling\.mode='sum': must be one of 'mean', 'cls', 'max'"):
        ModelCard.from_dict({**card, "pooling": {"mode": "sum", "normalize": True}})
    with pytest.raises(RecordError, match=r"task='chat': must be one of 'causal-lm'"):
        ModelCard.from_dict({**card, "task": "chat"})
    assert ModelCard.from_dict(card).pooling == Pooling(mode="mean", normalize=True)


def test_records_are_frozen_and_copies_are_validated() -> None:
    params = GenerationParams(temperature=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.temperature = 1.0  # type: ignore[misc]
    assert params.replace(max_tokens=3).max_tokens == 3
    with pytest.raises(RecordError, match="max_tokens=0"):
        params.replace(max_tokens=0)
    assert hash(params) == hash(GenerationParams(temperature=0))


def test_a_card_writes_the_bytes_pydantic_wrote(tmp_path: Path) -> None:
    (tmp_path / MODEL_CARD_NAME).write_text(PYDANTIC_CARD)
    card = read_model_card(tmp_path)
    out = tmp_path / "again"
    out.mkdir()
    card.write(out)
    assert (out / MODEL_CARD_NAME).read_text() == PYDANTIC_CARD


@pytest.mark.parametrize(
    ("text", "needle"),
    [("{", "not valid JSON"), ("[1]", "must be an object"), ('{"variant": "v"}', "task is required")],
)
def test_a_corrupt_card_says_what_to_re_run(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / MODEL_CARD_NAME).write_text(text)
    with pytest.raises(ModelLoadError, match="re-run `slmops export`") as info:
        read_model_card(tmp_path)
    assert needle in str(info.value)


def test_manifests_round_trip_and_old_ones_still_read(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"abc")
    manifest = write_manifest(tmp_path, stage="test", variant="v", source="unit", info={"k": [1, 2]})
    assert manifest.files == {"w.bin": FileEntry(size=3, sha256=manifest.files["w.bin"].sha256)}
    path = tmp_path / "slmops-manifest.json"
    data = json.loads(path.read_text())
    assert Manifest.read({**data, "created": "2026-11-01T00:00:00"}) == manifest
    path.write_text(json.dumps({**data, "files": {"w.bin": {"size": "three", "sha256": "x"}}}))
    with pytest.raises(IntegrityError, match=r"files\.w\.bin\.size='three': must be an integer"):
        read_manifest(tmp_path)
