"""The ``hub`` fetch source: huggingface_hub at a pinned commit, every file verified, resilient to bad networks.

huggingface_hub 0.36 resolves, downloads, caches and resumes (``.incomplete`` + Range);
it does not check content against the hashes the Hub publishes. This module adds what a
production fetch needs on top: revision -> commit sha, an allow-list with no pickle
weights, a disk-space check from the tree's sizes, sha256 / git-sha1 verification of
every file (a corrupt blob is deleted and fetched once more), retries with exponential
backoff on 5xx / 429 / dropped or stalled connections, clear errors for gated, missing
and offline-uncached repos, and a remote-code allow-list at pinned shas.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from slmops.artifacts import link_or_copy, sha256_file
from slmops.catalog.schema import Variant
from slmops.errors import FetchError, IntegrityError
from slmops.fetch.config import FetchConfig
from slmops.fetch.progress import DownloadProgress
from slmops.fetch.sources import SOURCES, Fetched
from slmops.quiet import logger_level
from slmops.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")
RETRY_STATUS = (429, 500, 502, 503, 504)
_DISK_MARGIN = 64 * 2**20
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class RemoteFile:
    """A file of the pinned commit, with the hash the Hub publishes for it."""

    path: str
    size: int
    git_sha1: str
    sha256: str | None  # LFS files only


@dataclass
class FetchStats:
    """What happened during a fetch: retries after transient errors and re-downloads after corruption."""

    retries: int = 0
    corrupt_refetched: int = 0


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file (what the Hub publishes for non-LFS files)."""
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as fh:
        while chunk := fh.read(2**20):
            h.update(chunk)
    return h.hexdigest()


def _is_transient(exc: BaseException) -> bool:
    import requests
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        return exc.response is not None and exc.response.status_code in RETRY_STATUS
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)):
        return True
    return isinstance(exc, OSError) and "Consistency check failed" in str(exc)  # connection cut mid-file


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class HubSession:
    """Calls into huggingface_hub with retries, timeouts and slmops error messages."""

    def __init__(self, variant: Variant, settings: Settings, stats: FetchStats, *, revision: str) -> None:
        from huggingface_hub import HfApi, constants

        self.variant = variant
        self.revision = revision  # as requested; the commit sha once resolved
        self.settings = settings
        self.stats = stats
        self.endpoint = settings.hf_endpoint or constants.ENDPOINT
        self.api = HfApi(endpoint=self.endpoint, token=settings.hf_token)
        # huggingface_hub reads its download timeout from this module constant on every request;
        # there is no per-call argument for it.
        constants.HF_HUB_DOWNLOAD_TIMEOUT = settings.hub_timeout_s  # type: ignore[assignment]  # declared int, read as a timeout (float is fine)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` (``what`` names it: "resolving revision 'main'", "downloading config.json"), retrying
        transient errors with exponential backoff; translate the rest into FetchError."""
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        v, attempts = self.variant, self.settings.hub_retries + 1
        for attempt in range(attempts):
            try:
                # huggingface_hub logs each of its own retries (a multi-line dump, shown twice under the CLI's
                # handler); slmops logs one line per retry of its own and the final error instead
                with logger_level("huggingface_hub", logging.ERROR):
                    return fn()
            except GatedRepoError:
                raise FetchError(
                    f"{v.repo_id} ({v.id}) is gated: accept its conditions on {self.endpoint}/{v.repo_id} "
                    "and set HF_TOKEN to a token of that account"
                ) from None
            except RepositoryNotFoundError:
                raise FetchError(
                    f"{v.repo_id} ({v.id}) was not found at {self.endpoint}: check repo_id in configs/catalog.yaml, "
                    "or set HF_TOKEN if the repo is private"
                ) from None
            except RevisionNotFoundError:
                raise FetchError(
                    f"{v.repo_id} ({v.id}) has no revision {self.revision!r} at {self.endpoint}; fix `revision:` "
                    f"of {v.id} in configs/catalog.yaml or run `slmops fetch {v.id} --revision <branch, tag or sha>`"
                ) from None
            except EntryNotFoundError as exc:
                # LocalEntryNotFoundError is also an EntryNotFoundError: huggingface_hub raises it when the server
                # did not answer (after its own retries) and nothing is cached. That is transient, not a missing file.
                if not isinstance(exc, LocalEntryNotFoundError):
                    raise FetchError(
                        f"{v.repo_id}@{self.revision}: {what} failed: the file does not exist in that commit; "
                        "check the file name and allow_patterns"
                    ) from None
                failure: BaseException = exc
            except Exception as exc:
                if not _is_transient(exc):
                    raise
                failure = exc
            if attempt + 1 == attempts:
                raise self._gave_up(what, failure, attempts) from failure
            delay = _retry_after(failure) or min(30.0, self.settings.hub_backoff_s * 2**attempt)
            delay *= 1 + random.random() * 0.1  # jitter: concurrent fetches do not retry in lockstep
            self.stats.retries += 1
            logger.warning(
                "%s of %s failed (%s); retry %d/%d in %.1fs",
                what,
                v.id,
                _short(failure),
                attempt + 1,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _gave_up(self, what: str, exc: BaseException, attempts: int) -> FetchError:
        """The error after the last retry: what failed, why in one phrase, and the fix that fits the cause."""
        v = self.variant
        head = f"{what} of {v.id} from {self.endpoint} failed after {attempts} attempts"
        if _is_dns_failure(exc):
            host = urlparse(self.endpoint).hostname or self.endpoint
            cached = _repo_cache(v.repo_id, self.settings.resolved_hf_cache()).is_dir()
            fix = (
                f"{v.repo_id} is in the local cache: run `slmops fetch {v.id} --offline` (or set HF_HUB_OFFLINE=1)"
                if cached
                else "check the network, DNS and proxy settings, or HF_ENDPOINT"
            )
            return FetchError(f"{head}: the host name {host!r} does not resolve (DNS); {fix}")
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if _SHA.match(self.revision) and (status is None or status >= 500):
            return FetchError(
                f"{head} ({_short(exc)}): the server may not have commit {self.revision} (a mirror that lags "
                f"behind the Hub does this); fetch a revision it has with `slmops fetch {v.id} --revision <sha or "
                "branch>`, fix `revision:` in configs/catalog.yaml, or point HF_ENDPOINT at another mirror"
            )
        return FetchError(
            f"{head} ({_short(exc)}); check the network, proxy and HF_ENDPOINT. SLMOPS_HUB_RETRIES and "
            "SLMOPS_HUB_BACKOFF_S set how long slmops keeps retrying"
        )


def _is_dns_failure(exc: BaseException) -> bool:
    text = repr(exc) + repr(exc.__cause__) + repr(exc.__context__)
    return any(
        m in text
        for m in (
            "NameResolutionError",
            "Failed to resolve",
            "Name or service not known",
            "nodename nor servname",
            "Temporary failure in name resolution",
        )
    )


def _short(exc: BaseException) -> str:
    """One phrase for a transient error: the HTTP status, or the exception type (never a multi-line dump)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    if type(exc).__name__ == "LocalEntryNotFoundError":
        return "no answer from the server"
    return "DNS failure" if _is_dns_failure(exc) else type(exc).__name__


def _wanted(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in patterns)


def plan_files(variant: Variant, tree: list[Any], patterns: list[str]) -> list[RemoteFile]:
    """The files to download: allow-listed, no pickle weights unless the variant allows them."""
    files = [
        RemoteFile(f.path, f.size, f.blob_id, f.lfs.sha256 if f.lfs is not None else None)
        for f in tree
        if hasattr(f, "blob_id") and _wanted(f.path, patterns)
    ]
    has_weights = any(
        f.path.endswith(".safetensors") or (variant.allow_pickle and _wanted(f.path, list(PICKLE_PATTERNS)))
        for f in files
    )
    if not has_weights:
        pickles = [f.path for f in tree if hasattr(f, "blob_id") and _wanted(f.path, list(PICKLE_PATTERNS))]
        if pickles:
            raise FetchError(
                f"{variant.repo_id} ({variant.id}) has only pickle weights ({', '.join(pickles[:3])}), which can run "
                "code when loaded; set allow_pickle: true for this variant in configs/catalog.yaml if you trust it"
            )
        raise FetchError(f"{variant.repo_id} ({variant.id}) has no *.safetensors weights among its files")
    if not any(f.path == "config.json" for f in files):
        raise FetchError(f"{variant.repo_id} ({variant.id}) has no config.json at that revision")
    return files


def check_disk_space(files: list[RemoteFile], cache_dir: Path) -> None:
    """Refuse to start a download that cannot fit (sizes from the tree, blobs already cached excluded)."""
    need = sum(f.size for f in files if not (cache_dir / "blobs" / (f.sha256 or f.git_sha1)).is_file())
    probe = cache_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need + _DISK_MARGIN > free:
        raise FetchError(
            f"the download needs {need / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB is free at {probe}; "
            "free some space or point HF_HOME at a larger disk"
        )


def verify(path: Path, remote: RemoteFile) -> str | None:
    """None if ``path`` matches the published hash, else a description of the mismatch."""
    if remote.sha256 is not None:
        actual, expected, kind = sha256_file(path), remote.sha256, "sha256"
    else:
        actual, expected, kind = git_blob_sha1(path), remote.git_sha1, "git sha1"
    return None if actual == expected else f"{kind} {actual} != published {expected}"


def _repo_cache(repo_id: str, cache_dir: Path) -> Path:
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


@SOURCES.register("hub")
def fetch_hub(variant: Variant, config: FetchConfig, out: Path, settings: Settings) -> Fetched:
    """Resolve the revision to a commit, download the allowed files with verification, link them into ``out``."""
    from huggingface_hub import hf_hub_download

    stats = FetchStats()
    revision = config.revision or variant.revision
    offline = settings.hf_offline if config.offline is None else config.offline
    cache_dir = settings.resolved_hf_cache()
    patterns = list(config.allow_patterns) + (["*.py"] if variant.remote_code else [])
    patterns += list(PICKLE_PATTERNS) if variant.allow_pickle else []
    if offline:
        return _fetch_offline(variant, revision, patterns, cache_dir, out)
    hub = HubSession(variant, settings, stats, revision=revision)
    sha = hub.call(
        f"resolving revision {revision!r}", lambda: hub.api.model_info(variant.repo_id, revision=revision).sha
    )
    if sha is None:
        raise FetchError(f"the Hub returned no commit sha for {variant.repo_id}@{revision}; retry, or pin a full sha")
    if variant.remote_code:
        _check_remote_code(variant, sha, config)
    hub.revision = sha
    tree = hub.call(
        "listing the files", lambda: list(hub.api.list_repo_tree(variant.repo_id, revision=sha, recursive=True))
    )
    files = plan_files(variant, tree, patterns)
    check_disk_space(files, _repo_cache(variant.repo_id, cache_dir))
    blobs = _repo_cache(variant.repo_id, cache_dir) / "blobs"
    with DownloadProgress(variant.id, sum(f.size for f in files), every_s=settings.progress_every_s) as progress:
        for remote in files:
            # huggingface_hub downloads into blobs/<etag>.incomplete; the etag is the published hash
            progress.downloading(blobs / f"{remote.sha256 or remote.git_sha1}.incomplete", remote.size)
            path = _download_verified(hub, remote, sha, cache_dir, hf_hub_download)
            progress.finished()
            link_or_copy(path, out / remote.path)
    _remember_ref(_repo_cache(variant.repo_id, cache_dir), revision, sha)
    if stats.retries or stats.corrupt_refetched:
        logger.warning(
            "%s: recovered after %d retries and %d corrupt re-downloads",
            variant.id,
            stats.retries,
            stats.corrupt_refetched,
        )
    return Fetched(
        source="hub",
        revision=sha,
        origin=f"{hub.endpoint}/{variant.repo_id}",
        info={"retries": stats.retries, "corrupt_refetched": stats.corrupt_refetched, "requested": revision},
    )


def _download_verified(hub: HubSession, remote: RemoteFile, sha: str, cache_dir: Path, download: Callable) -> Path:
    """Download one file and check its hash; a corrupt copy is deleted and fetched once more."""
    v = hub.variant
    for attempt in (1, 2):
        local = Path(
            hub.call(
                f"downloading {remote.path}",
                lambda: download(
                    v.repo_id,
                    remote.path,
                    revision=sha,
                    cache_dir=cache_dir,
                    endpoint=hub.endpoint,
                    token=hub.settings.hf_token,
                    etag_timeout=hub.settings.hub_timeout_s,
                ),
            )
        )
        problem = verify(local, remote)
        if problem is None:
            return local.resolve()
        blob = local.resolve()
        local.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        if attempt == 2:
            raise IntegrityError(
                f"{v.repo_id}@{sha[:12]}/{remote.path} is corrupt twice in a row ({problem}); the copy was deleted. "
                "A proxy or mirror may be altering files: check HF_ENDPOINT and retry"
            )
        hub.stats.corrupt_refetched += 1
        logger.warning("%s/%s failed verification (%s); downloading it again", v.id, remote.path, problem)
    raise AssertionError("unreachable")


def _remember_ref(repo_cache: Path, revision: str, sha: str) -> None:
    """Record branch/tag -> sha in the cache (refs/<revision>), as huggingface_hub does, so offline runs resolve it.

    We download by sha (so every file comes from one commit), which skips hf's own ref bookkeeping.
    """
    if revision == sha:
        return
    ref = repo_cache / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
    tmp.write_text(sha)
    os.replace(tmp, ref)


def _check_remote_code(variant: Variant, sha: str, config: FetchConfig) -> None:
    allowed = config.trusted_remote_code.get(variant.repo_id)
    if allowed != sha:
        where = f"it is allow-listed at {allowed[:12]}, not {sha[:12]}" if allowed else "it is not allow-listed"
        raise FetchError(
            f"{variant.id} needs remote code from {variant.repo_id}, and {where}. Review the repo's *.py at {sha} "
            f"and add `{variant.repo_id}: {sha}` to configs/remote_code.yaml"
        )


def _fetch_offline(variant: Variant, revision: str, patterns: list[str], cache_dir: Path, out: Path) -> Fetched:
    """Resolve from the local cache only; every blob is checked against the hash it is named by."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(
            snapshot_download(
                variant.repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir, local_files_only=True
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError):
        raise FetchError(
            f"offline: {variant.id} ({variant.repo_id}) at revision {revision!r} is not in the Hugging Face cache "
            f"{cache_dir}; fetch it once online, or unset HF_HUB_OFFLINE / drop --offline"
        ) from None
    for path in sorted(snapshot.rglob("*")):
        if not path.is_file():
            continue
        blob = path.resolve()
        name = blob.name
        actual = sha256_file(blob) if len(name) == 64 else git_blob_sha1(blob)
        if actual != name:
            raise IntegrityError(
                f"cached {variant.repo_id}/{path.relative_to(snapshot)} is corrupt ({actual} != {name}); "
                "fetch it again online"
            )
        link_or_copy(blob, out / path.relative_to(snapshot))
    if not (out / "config.json").is_file():
        raise FetchError(f"offline: the cached snapshot of {variant.id} has no config.json")
    return Fetched(
        source="hub", revision=snapshot.name, origin=f"cache:{snapshot}", info={"offline": True, "requested": revision}
    )
