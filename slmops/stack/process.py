"""Service processes: started in their own process group, recognised again by (pid, start time), stopped whole.

A service outlives the `slmops stack up` that started it, so a later `down` finds it only by what
state.json recorded. The start time guards against a reused pid; a zombie (an exited child nobody
reaped yet) counts as stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from slmops.errors import StackError


@dataclass(frozen=True)
class Account:
    """The user a service runs as, when not the caller (PostgreSQL refuses to run as root)."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Recorded:
    """A started service process as state.json keeps it."""

    pid: int
    create_time: float

    def process(self) -> psutil.Process | None:
        """The live process, or None when it exited (or its pid now belongs to another process)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.01 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return proc

    def alive(self) -> bool:
        return self.process() is not None


def spawn(
    command: list[str], *, env: dict[str, str], log: Path, cwd: Path, account: Account | None = None
) -> tuple[subprocess.Popen[bytes], Recorded]:
    """Start ``command`` in a new session (its own process group, no controlling terminal), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        try:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=[] if account else None,
            )
        except OSError as exc:
            raise StackError(f"cannot run {command[0]!r}: {exc}") from None
    return popen, Recorded(popen.pid, psutil.Process(popen.pid).create_time())


def _remaining(procs: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
    return left


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    left = _remaining(procs)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _remaining(left)
    return left


def _signal(proc: psutil.Process, sig: int, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, psutil.NoSuchProcess):
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def stop_processes(procs: list[psutil.Process], *, timeout_s: float) -> list[int]:
    """SIGTERM each of ``procs``, SIGKILL those still running after ``timeout_s``; the pids that survive even that."""
    for proc in procs:
        _signal(proc, signal.SIGTERM, group=False)
    left = _wait_gone(procs, timeout_s)
    for proc in left:
        _signal(proc, signal.SIGKILL, group=False)
    return sorted(p.pid for p in _wait_gone(left, 10.0))


def stop_tree(recorded: Recorded, *, sig: int = signal.SIGTERM, timeout_s: float, what: str) -> None:
    """Send ``sig`` to the service's process group; SIGKILL the group and every descendant still there after
    ``timeout_s``. Raises StackError naming the pids that survive even that."""
    leader = recorded.process()
    if leader is None:
        return
    try:
        procs = [leader, *leader.children(recursive=True)]  # before signalling: an orphaned child loses its parent
        group = os.getpgid(leader.pid) == leader.pid
    except (psutil.NoSuchProcess, ProcessLookupError):
        return
    _signal(leader, sig, group=group)
    for proc in procs[1:]:  # descendants that left the group (setsid) get the same signal one by one
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            if not group or os.getpgid(proc.pid) != leader.pid:
                _signal(proc, sig, group=False)
    left = _wait_gone(procs, timeout_s)
    if not left:
        return
    _signal(leader, signal.SIGKILL, group=group)
    for proc in left:
        _signal(proc, signal.SIGKILL, group=False)
    left = _wait_gone(left, 10.0)
    if left:
        raise StackError(f"{what}: processes {sorted(p.pid for p in left)} survive SIGKILL; stop them by hand")
