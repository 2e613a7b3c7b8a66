"""Artifact folders: where each stage writes, manifests with sha256, and atomic publication.

Every stage builds its folder under a temporary sibling path and publishes it
with a rename, so no later stage can ever pick up a half-written folder. The
manifest (``slmops-manifest.json``) lists every file with its size and sha256;
:func:`read_manifest` refuses a folder without a valid one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmops.errors import BuildLockError, IntegrityError, RecordError
from slmops.records import Record

logger = logging.getLogger(__name__)

MANIFEST_NAME = "slmops-manifest.json"
GATE_NAME = "slmops-gate.json"  # the gate result a registered folder carries beside its candidate
_CHUNK = 8 * 2**20


@dataclass(frozen=True, kw_only=True)
class FileEntry(Record):
    size: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class Manifest(Record):
    """What a stage produced: provenance plus every file's size and sha256.

    Only what the folder *is* goes in here, never how or when it was made (no timestamps, hosts,
    absolute paths or retry counts): the same inputs give a byte-identical manifest, so DVC sees
    a rebuilt folder as unchanged and the committed dvc.lock matches a fresh build. A record, not a pydantic
    model: the loader reads one on every open (see :mod:`slmops.records`).
    """

    schema_version: int = 1
    stage: str
    variant: str
    source: str
    revision: str | None = None
    files: dict[str, FileEntry]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, data: Any) -> Manifest:
        """From parsed JSON. Older manifests stamped a ``created`` time (registered versions still carry one): read
        them, ignoring it."""
        if isinstance(data, dict) and "created" in data:
            data = {k: v for k, v in data.items() if k != "created"}
        return cls.from_dict(data)

    def digest(self) -> str:
        """A content digest of the folder: sha256 over the sorted (path, sha256) pairs."""
        h = hashlib.sha256()
        for path in sorted(self.files):
            h.update(f"{path}\0{self.files[path].sha256}\n".encode())
        return h.hexdigest()

    def candidate_digest(self) -> str:
        """The digest of the candidate this folder holds: a registered folder adds only its gate result."""
        if GATE_NAME not in self.files:
            return self.digest()
        return self.replace(files={k: v for k, v in self.files.items() if k != GATE_NAME}).digest()


def file_identity(path: Path) -> list[int]:
    """What changes when a file's content may have: size, mtime and ctime (ns) and inode.

    ctime cannot be set back by hand, so a same-size edit with its mtime restored still shows.
    """
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_manifest(
    folder: Path,
    *,
    stage: str,
    variant: str,
    source: str,
    revision: str | None = None,
    info: dict[str, Any] | None = None,
) -> Manifest:
    """Hash every file under ``folder`` and write its manifest; returns it."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            rel = path.relative_to(folder).as_posix()
            files[rel] = FileEntry(size=path.stat().st_size, sha256=sha256_file(path))
    manifest = Manifest(stage=stage, variant=variant, source=source, revision=revision, files=files, info=info or {})
    write_json_atomic(folder / MANIFEST_NAME, manifest.to_dict())
    return manifest


def read_manifest(folder: Path, *, verify: bool = False) -> Manifest:
    """The folder's manifest. Raises IntegrityError when missing, invalid, or (``verify``) not matching the files."""
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = Manifest.read(json.loads(path.read_bytes()))
    except FileNotFoundError:
        raise IntegrityError(
            f"{folder} has no {MANIFEST_NAME}: it was not produced by a finished slmops stage; re-run that stage"
        ) from None
    except RecordError as exc:
        raise IntegrityError(f"{path} is not a valid manifest ({exc}); re-run the stage") from None
    except ValueError as exc:  # json's errors, UnicodeDecodeError included
        raise IntegrityError(f"{path} is not a valid manifest (not JSON: {exc}); re-run the stage") from None
    if verify:
        verify_files(folder, manifest)
    return manifest


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Check every manifest file's size and sha256; raise IntegrityError naming the first mismatch."""
    for rel, entry in manifest.files.items():
        path = Path(folder) / rel
        if not path.is_file():
            raise IntegrityError(f"{path} is listed in the manifest but missing; re-fetch or re-run the stage")
        if path.stat().st_size != entry.size:
            raise IntegrityError(f"{path}: size {path.stat().st_size} != manifest {entry.size}; the file is corrupt")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise IntegrityError(f"{path}: sha256 {actual} != manifest {entry.sha256}; the file is corrupt")


@contextlib.contextmanager
def atomic_folder(dest: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``dest``; on success it replaces ``dest`` in one rename, on error it is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".partial", dir=dest.parent))
    try:
        yield tmp
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temps(dest: Path) -> list[Path]:
    """Delete what a killed writer of ``dest`` left beside it: its temp files and folders (``.<name>.<pid>.*.tmp``,
    ``.partial``, ``.old``) whose process is gone. A live writer's are kept. Returns the deleted paths."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.(\d+)\.(?:.*\.(?:tmp|partial)|old)$")
    removed = []
    for entry in dest.parent.iterdir():
        m = pattern.match(entry.name)
        if m is None or _alive(int(m[1])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
        logger.info("removed %s, left by a killed build (pid %s)", entry, m[1])
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (same filesystem), else copy it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def folder_size(folder: Path) -> int:
    """Total bytes of the regular files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


@contextlib.contextmanager
def folder_lock(folder: Path, *, what: str) -> Iterator[None]:
    """Hold an exclusive cross-process lock on ``folder`` itself (flock on its directory fd) for the block.

    No lock file is created, so none is left behind. A second process logs that it waits, then waits.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("waiting for another process %s (lock on %s)", what, folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# The build lock. One build at a time per artifacts folder: the flow holds it for its whole run, each pipeline
# stage command (so each `dvc repro` stage) for its own run. It is a flock on the folder itself, so no lock file
# exists to be left behind; the kernel releases it when the holder exits, however it exits.
_held_lock = threading.Lock()
_held: dict[Path, int] = {}  # resolved folder -> depth: re-entrant for every thread of this process
OWNER_ENV = "SLMOPS_BUILD_LOCK_OWNER"  # read back through Settings.build_lock_owner
_POLL_S = 0.2


@contextlib.contextmanager
def build_lock(folder: Path, *, what: str, wait_s: float | None = None, owner: int | None = None) -> Iterator[None]:
    """Hold the project-wide build lock on the artifacts ``folder`` for the block (``what``: "slmops export x").

    Re-entrant: nested calls in this process (the flow's tasks, in other threads) and calls in the child processes
    of the holder (``owner``, from ``Settings.build_lock_owner``) run inside the build that holds it. Another
    process logs "waiting for build <pid> (<command>, started <time>) holding <folder>" and waits up to ``wait_s``
    seconds (None: until the lock is free). Raises BuildLockError naming the holder when the wait runs out.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    with _held_lock:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _held_lock:
                _held[key] -= 1
        return
    if owner is not None and owner != os.getpid() and _is_ancestor(owner) and owner in _holders(key):
        logger.debug("%s runs inside build %d, which holds %s", what, owner, key)
        yield
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        _acquire(fd, key, what=what, wait_s=wait_s)
        with _held_lock:
            _held[key] = 1
            previous = os.environ.get(OWNER_ENV)
            os.environ[OWNER_ENV] = str(os.getpid())  # inherited by the build's child processes
        try:
            yield
        finally:
            with _held_lock:
                del _held[key]
                if previous is None:
                    os.environ.pop(OWNER_ENV, None)
                else:
                    os.environ[OWNER_ENV] = previous
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(fd: int, folder: Path, *, what: str, wait_s: float | None) -> None:
    import fcntl

    deadline = None if wait_s is None else time.monotonic() + wait_s
    warned = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if warned:
                logger.warning("%s: the other build ended; starting", what)
            return
        except BlockingIOError:
            pass
        holder = describe_holder(folder)
        if deadline is not None and time.monotonic() >= deadline:
            raise BuildLockError(
                f"{what}: another build holds {folder}: {holder}. Run again when it has ended, or set "
                f"SLMOPS_BUILD_LOCK_WAIT_S to wait for it (waited {wait_s:g} s)"
            )
        if not warned:
            limit = "until it ends" if wait_s is None else f"up to {wait_s:g} s (SLMOPS_BUILD_LOCK_WAIT_S)"
            logger.warning("%s: waiting for build %s holding %s, %s", what, holder, folder, limit)
            warned = True
        time.sleep(_POLL_S if deadline is None else max(0.0, min(_POLL_S, deadline - time.monotonic())))


def describe_holder(folder: Path) -> str:
    """Who holds the build lock on ``folder``: "pid 123 (python -m flows.build, started 2026-11-30 15:03:11)"."""
    pids = _holders(Path(folder).resolve())
    if not pids:
        return "of another process"
    pid = pids[0]
    return f"pid {pid} ({_command(pid)}, started {_started(pid)})"


def _holders(folder: Path) -> list[int]:
    """The pids holding a flock on ``folder`` (Linux /proc/locks; empty where unavailable)."""
    try:
        inode = os.stat(folder).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":  # "->": a waiter, not a holder
            continue
        if fields[5].rsplit(":", 1)[-1] == str(inode) and fields[4].isdigit():
            pids.append(int(fields[4]))
    return pids


def _command(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return "command unknown"
    words = [os.path.basename(argv[0].decode(errors="replace"))] + [a.decode(errors="replace") for a in argv[1:]]
    text = " ".join(words)
    return text if len(text) <= 120 else text[:117] + "..."


def _started(pid: int) -> str:
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return "at an unknown time"
    started = boot + ticks / os.sysconf("SC_CLK_TCK")
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))


def _is_ancestor(pid: int) -> bool:
    """Whether ``pid`` is this process's parent, grandparent, ... (Linux /proc; elsewhere the parent only)."""
    current = os.getppid()
    for _ in range(64):
        if current == pid:
            return True
        if current <= 1 or sys.platform != "linux":
            return False
        try:
            current = int(Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False
