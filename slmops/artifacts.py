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
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slmops.errors import IntegrityError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "slmops-manifest.json"
GATE_NAME = "slmops-gate.json"  # the gate result a registered folder carries beside its candidate
_CHUNK = 8 * 2**20


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int
    sha256: str


class Manifest(BaseModel):
    """What a stage produced: provenance plus every file's size and sha256.

    Only what the folder *is* goes in here, never how or when it was made (no timestamps, hosts,
    absolute paths or retry counts): the same inputs give a byte-identical manifest, so DVC sees
    a rebuilt folder as unchanged and the committed dvc.lock matches a fresh build.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    stage: str
    variant: str
    source: str
    revision: str | None = None
    files: dict[str, FileEntry]
    info: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_created(cls, data: Any) -> Any:
        """Older manifests stamped a ``created`` time (registered versions still carry one): read them, ignoring it."""
        if isinstance(data, dict) and "created" in data:
            data = {k: v for k, v in data.items() if k != "created"}
        return data

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
        return self.model_copy(update={"files": {k: v for k, v in self.files.items() if k != GATE_NAME}}).digest()


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    write_json_atomic(folder / MANIFEST_NAME, manifest.model_dump(mode="json"))
    return manifest


def read_manifest(folder: Path, *, verify: bool = False) -> Manifest:
    """The folder's manifest. Raises IntegrityError when missing, invalid, or (``verify``) not matching the files."""
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise IntegrityError(
            f"{folder} has no {MANIFEST_NAME}: it was not produced by a finished slmops stage; re-run that stage"
        ) from None
    except ValidationError as exc:
        raise IntegrityError(f"{path} is not a valid manifest ({exc.error_count()} errors); re-run the stage") from None
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
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
