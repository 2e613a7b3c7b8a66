"""release_clean_pages against the real kernel: a private writable file mapping (how onnxruntime maps external
weights) loses its resident clean pages, keeps its content, and a mapping with written pages is left alone."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from slmops.runtime.pages import release_clean_pages

PAGES = 64
pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux /proc/self/smaps")


def _resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path``."""
    target, total, inside = os.path.realpath(path), 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if not fields[0].endswith(":"):
            inside = len(fields) == 6 and fields[5] == target
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def _mapped(path: Path, data: bytes) -> mmap.mmap:
    path.write_bytes(data)
    with path.open("rb") as fh:
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)  # MAP_PRIVATE, readable and writable


def test_read_pages_are_released_and_read_back_unchanged(tmp_path: Path) -> None:
    data = os.urandom(PAGES * mmap.PAGESIZE)
    weights = tmp_path / "model.onnx.data"
    mapping = _mapped(weights, data)
    assert mapping[:] == data  # touches every page
    assert _resident_kb(weights) >= PAGES * mmap.PAGESIZE // 1024
    released = release_clean_pages([tmp_path / "." / "model.onnx.data"])  # matched by its real path
    assert released >= PAGES * mmap.PAGESIZE
    assert _resident_kb(weights) == 0
    assert release_clean_pages([weights]) == 0  # nothing resident is left to release
    assert mapping[:] == data  # mapped again from the page cache
    assert _resident_kb(weights) >= PAGES * mmap.PAGESIZE // 1024
    mapping.close()


def test_a_mapping_with_written_pages_is_left_alone(tmp_path: Path) -> None:
    data = os.urandom(PAGES * mmap.PAGESIZE)
    weights = tmp_path / "model.onnx.data"
    mapping = _mapped(weights, data)
    mapping[:5] = b"bytes"  # copy-on-write: this page now exists only in this process
    assert mapping[5:] == data[5:]
    assert release_clean_pages([weights]) == 0
    assert mapping[:5] == b"bytes"
    assert mapping[5:] == data[5:]
    assert weights.read_bytes() == data  # a private mapping never writes the file
    mapping.close()


def test_files_without_mappings_release_nothing(tmp_path: Path) -> None:
    other = tmp_path / "unmapped.onnx.data"
    other.write_bytes(b"\0" * mmap.PAGESIZE)
    assert release_clean_pages([other]) == 0
    assert release_clean_pages([]) == 0


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path`` (the longest mount point above it in /proc/mounts)."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, point, fstype, *_ = line.split()
        if str(path.resolve()).startswith(point.rstrip("/") + "/") and len(point) > len(best):
            best, kind = point, fstype
    return kind


def test_a_table_read_sparsely_maps_one_page_per_row(tmp_path: Path) -> None:
    """The embedding case: a large mapped table, read a row here and there. After read_sparsely each row costs
    its own page; before it, the kernel maps what the page cache holds around each row (fault-around: up to 16
    pages; a whole large folio where the filesystem caches those)."""
    from slmops.runtime.pages import read_sparsely

    if _filesystem(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is on {_filesystem(tmp_path)}, whose cached pages cannot be dropped")
    size, stride = 8 << 20, 256 << 10  # 32 rows, 256 kB apart
    data = os.urandom(size)
    table = tmp_path / "model.onnx.data"
    with table.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())  # written back: dirty pages cannot be dropped
    with table.open("rb") as fh:
        mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    rows = range(0, size, stride)
    assert [mapping[i] for i in rows] == [data[i] for i in rows]
    before_kb = _resident_kb(table)
    assert before_kb >= 2 * len(rows) * mmap.PAGESIZE // 1024  # what the fix is for: more than a page per row
    release_clean_pages([table])
    assert read_sparsely([table]) >= size
    assert read_sparsely([table], min_bytes=size + 1) == 0  # smaller mappings are left alone
    assert [mapping[i + 7] for i in rows] == [data[i + 7] for i in rows]  # the content is unchanged
    assert _resident_kb(table) <= len(rows) * mmap.PAGESIZE // 1024 + 8, before_kb
    mapping.close()
