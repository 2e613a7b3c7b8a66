"""The build lock itself: re-entrant in the holder's threads and child processes, exclusive for anyone else,
no file left behind; and the sweep of what a killed writer left beside a stage output."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from slmops.artifacts import atomic_folder, build_lock, remove_stale_temps, write_json_atomic

# a stage in another process: takes the lock the way slmops.pipeline does, without waiting
CHILD = (
    "import sys; from slmops.artifacts import build_lock; from slmops.settings import get_settings\n"
    "s = get_settings()\n"
    "with build_lock(sys.argv[1], what='slmops export x', wait_s=0, owner=s.build_lock_owner):\n"
    "    print('ran')\n"
)


def _child(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, str(folder)], env=env, capture_output=True, text=True)


def test_reentrant_for_threads_and_children_exclusive_for_others(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SLMOPS_BUILD_LOCK_OWNER", raising=False)
    folder = tmp_path / "artifacts"
    with build_lock(folder, what="build flow x"):
        ran = []

        def task() -> None:
            with build_lock(folder, what="task", wait_s=0):
                ran.append(1)

        thread = threading.Thread(target=task)
        thread.start()
        thread.join()
        assert ran == [1]  # a task thread of the flow runs inside the flow's lock
        assert os.environ["SLMOPS_BUILD_LOCK_OWNER"] == str(os.getpid())
        child = _child(folder, dict(os.environ))
        assert child.returncode == 0 and child.stdout == "ran\n", child.stderr  # a child of the build: inside it
        other = _child(folder, {k: v for k, v in os.environ.items() if k != "SLMOPS_BUILD_LOCK_OWNER"})
        assert other.returncode == 1 and "BuildLockError" in other.stderr
        assert f"another build holds {folder.resolve()}: pid {os.getpid()} (" in other.stderr
    assert "SLMOPS_BUILD_LOCK_OWNER" not in os.environ
    assert _child(folder, dict(os.environ)).returncode == 0  # released
    assert list(folder.iterdir()) == []  # no lock file


def test_a_forged_owner_does_not_let_a_process_in(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SLMOPS_BUILD_LOCK_OWNER", raising=False)
    folder = tmp_path / "artifacts"
    with build_lock(folder, what="build flow x"):
        # pid 1 is an ancestor of every process but does not hold the lock
        forged = _child(folder, {**os.environ, "SLMOPS_BUILD_LOCK_OWNER": "1"})
    assert forged.returncode == 1 and "another build holds" in forged.stderr


def test_leftovers_of_a_killed_writer_are_swept_a_live_ones_kept(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "model"
    dest.parent.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [dest.parent / f".model.{dead_pid}.abc.partial", dest.parent / f".model.{dead_pid}.old"]
    for path in stale:
        path.mkdir()
        (path / "big.onnx").write_bytes(b"x")
    stale_json = dest.parent / f".model.json.{dead_pid}.x1.tmp"
    stale_json.write_text("{")
    live = dest.parent / f".model.{os.getpid()}.def.partial"
    live.mkdir()
    unrelated = dest.parent / ".other.123.partial"
    unrelated.mkdir()
    assert sorted(remove_stale_temps(dest)) == sorted(stale)
    with atomic_folder(dest) as tmp:
        (tmp / "a").write_text("a")
    write_json_atomic(dest.parent / "model.json", {"a": 1})
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted(["model", "model.json", live.name, unrelated.name])
