"""Verified stamps: a cached folder is hashed once, and re-hashed whenever one of its files may have changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import slmops.artifacts
from slmops.artifacts import write_manifest
from slmops.errors import IntegrityError
from slmops.runtime.cache import stamp_path, verify_folder, version_folder
from slmops.runtime.loader import load
from slmops.runtime.registry import VersionRef
from slmops.runtime.states import LoadingState


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"weights-" * 1000)
    (folder / "tokenizer.json").write_text("{}")
    write_manifest(folder, stage="quantize", variant="tiny", source="test")
    return folder


@pytest.fixture()
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file sha256_file hashes, in order."""
    seen: list[Path] = []
    real = slmops.artifacts.sha256_file

    def counting(path: Path) -> str:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(slmops.artifacts, "sha256_file", counting)
    return seen


def test_second_verification_hashes_nothing(folder: Path, tmp_path: Path, hashes: list[Path]) -> None:
    stamps = tmp_path / "stamps"
    verify_folder(folder, stamps_dir=stamps)
    assert len(hashes) == 2 and stamp_path(folder, stamps).is_file()
    verify_folder(folder, stamps_dir=stamps)
    assert len(hashes) == 2


def _rewrite_same_size(path: Path, *, keep_mtime: bool) -> None:
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    mtime = before.st_mtime_ns if keep_mtime else before.st_mtime_ns + 5_000_000_000
    os.utime(path, ns=(before.st_atime_ns, mtime))
    assert path.stat().st_size == before.st_size


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["mtime-changed", "mtime-restored"])
def test_content_change_of_the_same_size_is_detected(folder: Path, tmp_path: Path, keep_mtime: bool) -> None:
    stamps = tmp_path / "stamps"
    verify_folder(folder, stamps_dir=stamps)
    _rewrite_same_size(folder / "model.onnx", keep_mtime=keep_mtime)  # ctime moves even when mtime is put back
    with pytest.raises(IntegrityError, match=r"model\.onnx: sha256 .* the file is corrupt"):
        verify_folder(folder, stamps_dir=stamps)
    assert not stamp_path(folder, stamps).exists()  # a failed check leaves no stamp behind
    with pytest.raises(IntegrityError):
        verify_folder(folder, stamps_dir=stamps)


def test_a_touched_file_is_rehashed_and_restamped(folder: Path, tmp_path: Path, hashes: list[Path]) -> None:
    stamps = tmp_path / "stamps"
    verify_folder(folder, stamps_dir=stamps)
    os.utime(folder / "tokenizer.json")  # same content, new mtime: hash again, still valid
    verify_folder(folder, stamps_dir=stamps)
    assert len(hashes) == 4
    verify_folder(folder, stamps_dir=stamps)
    assert len(hashes) == 4


def test_a_garbled_stamp_means_a_full_check(folder: Path, tmp_path: Path, hashes: list[Path]) -> None:
    stamps = tmp_path / "stamps"
    verify_folder(folder, stamps_dir=stamps)
    stamp_path(folder, stamps).write_text("{not json")
    verify_folder(folder, stamps_dir=stamps)
    assert len(hashes) == 4


def test_load_reports_failed_for_a_corrupt_folder(folder: Path) -> None:
    from slmops.settings import get_settings

    verify_folder(folder, stamps_dir=get_settings().cache_dir / "verified")  # stamped where load() looks
    _rewrite_same_size(folder / "model.onnx", keep_mtime=True)
    events = []
    with pytest.raises(IntegrityError):
        load(str(folder), on_state=events.append)
    assert [e.state for e in events] == [LoadingState.NOT_LOADED, LoadingState.FAILED]
    assert "model.onnx" in events[-1].detail


def test_versions_of_two_registries_get_their_own_cache_folders(tmp_path: Path) -> None:
    """Version 3 of one project's registry and version 3 of another's (different candidates) do not share a copy."""
    ours, theirs = (VersionRef("slmops-causal-lm", "3", "runs:/x/m", digest=d * 64) for d in "ab")
    assert version_folder(ours, tmp_path) != version_folder(theirs, tmp_path)
    assert version_folder(ours, tmp_path) == tmp_path / "models" / "slmops-causal-lm" / f"3-{'a' * 12}"
    assert version_folder(VersionRef("m", "1", "runs:/x/m"), tmp_path).name == "1"  # registered without a digest
