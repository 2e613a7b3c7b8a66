"""slmops.runtime.pages against the real kernel: what an open allocated moves onto 2 MB pages, content unchanged;
mappings that were there before, and mostly untouched ones, are left as they are."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from slmops.runtime.pages import (
    HUGE_PAGE,
    anonymous_mappings,
    collapse_in_background,
    collapse_new_mappings,
    huge_pages_available,
    wait_for_huge_pages,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux /proc/self/smaps")


def _huge_kb(start: int, end: int) -> int:
    """AnonHugePages kB of this process's mapping [start, end)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):
            s, e = (int(x, 16) for x in fields[0].split("-"))
            inside = s <= start < e
        elif inside and fields[0] == "AnonHugePages:":
            return int(fields[1])
    return 0


def _private(size: int) -> mmap.mmap:
    """Anonymous private memory, as malloc maps it (mmap's default, MAP_SHARED, is shared memory)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _address(buffer: mmap.mmap) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def test_anonymous_mappings_see_a_new_allocation() -> None:
    before = {(s, e) for s, e, _ in anonymous_mappings()}
    block = _private(8 * HUGE_PAGE)
    block.write(os.urandom(len(block)))
    start = _address(block)
    found = [(s, e, anon) for s, e, anon in anonymous_mappings() if s <= start < e]
    assert found and (found[0][0], found[0][1]) not in before and found[0][2] >= 8 * HUGE_PAGE
    assert anonymous_mappings(Path("/nonexistent/smaps")) == []
    block.close()


def _new_resident_mapping() -> tuple[bytes, list, mmap.mmap]:
    """8 huge pages of random bytes and one more of ones, fully resident, mapped after ``before`` was read."""
    data = os.urandom(8 * HUGE_PAGE)
    before = anonymous_mappings()
    full = _private(9 * HUGE_PAGE)
    full[: len(data)] = data
    full[len(data) :] = b"\1" * HUGE_PAGE
    return data, before, full


def test_collapse_moves_a_new_resident_mapping_onto_huge_pages() -> None:
    if not huge_pages_available():
        pytest.skip("transparent huge pages are 'never' on this machine")
    data, before, full = _new_resident_mapping()
    collapsed = collapse_new_mappings(before)
    if collapsed == 0:
        pytest.skip("this kernel has no MADV_COLLAPSE (Linux 6.1+)")
    start = _address(full)
    assert _huge_kb(start, start + len(full)) >= 8 * HUGE_PAGE // 1024  # its aligned interior at least
    assert full[: len(data)] == data  # the same bytes, now on huge pages

    # (no "nothing else collapsed" check: in a big test process, reading smaps itself can map new resident memory)
    before = anonymous_mappings()
    sparse = _private(16 * HUGE_PAGE)
    sparse[:4096] = b"\1" * 4096  # one page of 16 MB in memory: not filled in
    collapse_new_mappings(before)
    assert _huge_kb(_address(sparse), _address(sparse) + len(sparse)) == 0
    full.close()
    sparse.close()


def _kernel_collapses() -> bool:
    before = anonymous_mappings()
    probe = _private(5 * HUGE_PAGE)
    probe.write(b"\1" * len(probe))
    try:
        return collapse_new_mappings(before) > 0
    finally:
        probe.close()


def test_an_open_collapses_in_a_thread_that_can_be_waited_for() -> None:
    if not huge_pages_available() or not _kernel_collapses():
        pytest.skip("no transparent huge pages or no MADV_COLLAPSE (Linux 6.1+) on this machine")
    data, before, full = _new_resident_mapping()
    collapse = collapse_in_background(before)
    assert collapse is not None and collapse.thread.daemon
    collapse.thread.join(timeout=0.5)
    start = _address(full)
    assert collapse.thread.is_alive() and not collapse.started  # it waits to be started
    assert _huge_kb(start, start + len(full)) == 0
    assert wait_for_huge_pages(timeout=60)  # which starts it
    assert collapse.started and not collapse.thread.is_alive()
    start = _address(full)
    assert _huge_kb(start, start + len(full)) >= 8 * HUGE_PAGE // 1024
    assert full[: len(data)] == data
    full.close()


SESSION_CHECK = """
import json, sys
import numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
from slmops.runtime.pages import wait_for_huge_pages
from slmops.runtime.session import CollapsingSession, create_session
folder = sys.argv[1]
weight = (np.arange(3072 * 4096, dtype=np.float32).reshape(3072, 4096) % 97) / 100
graph = helper.make_graph(
    [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3072])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])],
    [numpy_helper.from_array(weight, "w")],
)
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), folder + "/m.onnx")
session = create_session(folder + "/m.onnx", threads=1, huge_pages=True)
out = {"collapsing": isinstance(session, CollapsingSession)}
if out["collapsing"]:
    out["started_before_run"] = session.collapse.started
    out["input"] = session.get_inputs()[0].name
    x = np.ones((1, 3072), dtype=np.float32)
    (y,) = session.run(None, {"x": x})
    out["started_after_run"] = session.collapse.started
    out["matches"] = bool(np.allclose(y, x @ weight, rtol=1e-4))
    out["waited"] = wait_for_huge_pages(timeout=60)
plain = create_session(folder + "/m.onnx", threads=1, huge_pages=False)
out["plain_without"] = not isinstance(plain, CollapsingSession)
print(json.dumps(out))
"""


def test_a_session_starts_its_collapse_when_its_first_run_ends(tmp_path: Path) -> None:
    """create_session leaves the collapse to the end of the first run (beside a run, it stalls it); the session it
    returns runs and answers as onnxruntime's own. In a fresh process: the open prepacks the 48 MB weight into a
    new mapping there, while a long-lived one (this suite's) may serve it from memory it already maps."""
    import json
    import subprocess
    import sys

    if not huge_pages_available():
        pytest.skip("no transparent huge pages on this machine")
    done = subprocess.run(
        [sys.executable, "-c", SESSION_CHECK, str(tmp_path)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "collapsing": True,
        "started_before_run": False,
        "input": "x",
        "started_after_run": True,
        "matches": True,
        "waited": True,
        "plain_without": True,
    }
