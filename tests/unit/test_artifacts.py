from __future__ import annotations

from pathlib import Path

import pytest

from slmops.artifacts import MANIFEST_NAME, atomic_folder, read_manifest, write_manifest
from slmops.errors import IntegrityError


def test_atomic_folder_publishes_whole_or_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_folder(dest) as tmp:
        (tmp / "half.onnx").write_bytes(b"x")
        raise RuntimeError("export crashed")
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    with atomic_folder(dest) as tmp:
        (tmp / "a.txt").write_text("v1")
    with atomic_folder(dest) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_manifest_detects_corruption_and_absence(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(b"weights" * 100)
    manifest = write_manifest(tmp_path, stage="test", variant="v", source="unit")
    assert set(manifest.files) == {"sub/w.bin"}
    read_manifest(tmp_path, verify=True)
    data = bytearray((tmp_path / "sub" / "w.bin").read_bytes())
    data[10] ^= 0xFF
    (tmp_path / "sub" / "w.bin").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        read_manifest(tmp_path, verify=True)
    (tmp_path / MANIFEST_NAME).unlink()
    with pytest.raises(IntegrityError, match="no slmops-manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(IntegrityError, match="not a valid manifest"):
        read_manifest(tmp_path)
