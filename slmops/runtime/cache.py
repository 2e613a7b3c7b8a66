"""The runtime's artifact cache: one verified copy per registered version, and verified stamps.

Verifying a folder means hashing every file against its manifest (0.36 s for the 250 MB
SmolLM2-135M wo-int8 graph). After a full check a *verified stamp* records, per file, its
size, mtime_ns, ctime_ns and inode, plus the manifest's digest; a later load whose files
all still match the stamp skips the hashing (a few stat calls, well under 1 ms). Any write
to a file changes its ctime, which cannot be set back from user space, so a file edited in
place is re-hashed even if its size and mtime were restored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from slmops.artifacts import (
    MANIFEST_NAME,
    Manifest,
    file_identity,
    read_manifest,
    verify_files,
    write_json_atomic,
)
from slmops.errors import IntegrityError, ModelLoadError, RegistryError
from slmops.quiet import mlflow_progress_bars_off
from slmops.runtime.registry import VersionRef

logger = logging.getLogger(__name__)

STAMP_SCHEMA = 1


def stamp_path(folder: Path, stamps_dir: Path) -> Path:
    """Where the stamp of ``folder`` lives: keyed by its absolute path, outside the folder itself."""
    key = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:32]
    return Path(stamps_dir) / f"{key}.json"


def _stamp(folder: Path, manifest: Manifest) -> dict:
    files = {rel: file_identity(folder / rel) for rel in [*manifest.files, MANIFEST_NAME]}
    return {"schema": STAMP_SCHEMA, "folder": str(folder.resolve()), "digest": manifest.digest(), "files": files}


def verify_folder(folder: Path, *, stamps_dir: Path) -> Manifest:
    """The folder's manifest, its files checked: through the stamp when nothing changed, else by sha256.

    Raises IntegrityError (as :func:`slmops.artifacts.read_manifest`) when a file does not match.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    path = stamp_path(folder, stamps_dir)
    try:
        if json.loads(path.read_text()) == _stamp(folder, manifest):
            return manifest
    except (OSError, ValueError):
        pass  # no stamp, an unreadable one, or a file gone: verify in full
    path.unlink(missing_ok=True)
    verify_files(folder, manifest)
    write_stamp(folder, manifest, stamps_dir=stamps_dir)
    return manifest


def write_stamp(folder: Path, manifest: Manifest, *, stamps_dir: Path) -> None:
    """Record that ``folder`` was just verified against ``manifest`` (call only right after a full check)."""
    path = stamp_path(folder, stamps_dir)
    try:
        write_json_atomic(path, _stamp(Path(folder), manifest))
    except OSError as exc:  # a read-only cache still loads, it just hashes every time
        logger.info("cannot write the verified stamp %s: %s", path, exc)


def version_folder(ref: VersionRef, cache_dir: Path) -> Path:
    """Where the cache keeps ``ref``: by name, number and candidate digest. Two registries on one machine (two
    projects, or a project and `slmops stack`) both have a version 3 of slmops-causal-lm; keyed by number alone,
    each download replaced the other's."""
    key = ref.version if ref.digest is None else f"{ref.version}-{ref.digest[:12]}"
    return Path(cache_dir) / "models" / ref.name / key


def fetch_version(
    ref: VersionRef, *, cache_dir: Path, notify: Callable[[float], None], tracking_uri: str | None = None
) -> Path:
    """The verified artifact folder of ``ref``: from the cache when intact, else downloaded (once per version).

    A cached copy that fails its check, or whose manifest digest differs from the digest the
    version was registered with (a registry rebuilt with the same version numbers), is
    downloaded again; a fresh download that fails the check raises IntegrityError.
    """
    cache = version_folder(ref, cache_dir)
    stamps = Path(cache_dir) / "verified"
    if (cache / "MLmodel").is_file():
        try:
            folder = model_folder(cache, ref.uri)
            manifest = verify_folder(folder, stamps_dir=stamps)
            if ref.digest is None or manifest.candidate_digest() == ref.digest:
                notify(1.0)
                return folder
            logger.warning(
                "cached copy of %s has digest %s, the registry %s; downloading it again",
                ref.uri,
                manifest.candidate_digest()[:12],
                ref.digest[:12],
            )
        except (IntegrityError, ModelLoadError) as exc:
            logger.warning("cached copy of %s is unusable (%s); downloading it again", ref.uri, exc)
    return _download(ref, cache, stamps_dir=stamps, notify=notify, tracking_uri=tracking_uri)


def _download(
    ref: VersionRef, cache: Path, *, stamps_dir: Path, notify: Callable[[float], None], tracking_uri: str | None
) -> Path:
    import mlflow.artifacts  # only on a cache miss: importing mlflow costs about 2 s
    from mlflow.exceptions import MlflowException

    notify(0.0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        try:
            with mlflow_progress_bars_off():  # progress goes through the DOWNLOADING state instead
                # the tracking URI resolves mlflow-artifacts:/ sources (a server's proxied artifacts)
                local = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=ref.source, dst_path=str(tmp), tracking_uri=tracking_uri
                    )
                )
        except MlflowException as exc:
            raise RegistryError(
                f"downloading {ref.uri} from {ref.source} failed: {exc.message}; check that the "
                "tracking server is up and serves artifacts (mlflow server --serve-artifacts)"
            ) from None
        manifest = read_manifest(model_folder(local, ref.uri), verify=True)
        if ref.digest is not None and manifest.candidate_digest() != ref.digest:
            raise IntegrityError(
                f"{ref.uri} was registered with candidate digest {ref.digest} but its files have "
                f"{manifest.candidate_digest()}; re-register the candidate"
            )
        shutil.rmtree(cache, ignore_errors=True)  # a stale or corrupt copy
        os.replace(local, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    folder = model_folder(cache, ref.uri)
    write_stamp(folder, manifest, stamps_dir=stamps_dir)  # hashed in tmp just now; a rename keeps the files
    notify(1.0)
    return folder


def model_folder(root: Path, uri: str) -> Path:
    """The slmops artifact folder inside a downloaded pyfunc model (named in its MLmodel file)."""
    import yaml

    from slmops.names import ARTIFACT_KEY

    try:
        mlmodel = yaml.safe_load((root / "MLmodel").read_text())
        rel = mlmodel["flavors"]["python_function"]["artifacts"][ARTIFACT_KEY]["path"]
    except (FileNotFoundError, KeyError, TypeError):
        raise ModelLoadError(f"{uri} is not an slmops model (its MLmodel names no {ARTIFACT_KEY!r} artifact)") from None
    return root / rel
