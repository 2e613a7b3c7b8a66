"""The fetch stage entry point used by the CLI, DVC and the Prefect flow."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slmops.artifacts import Manifest, atomic_folder, folder_lock, write_json_atomic, write_manifest
from slmops.catalog.schema import Variant
from slmops.fetch.config import FetchConfig
from slmops.fetch.sources import SOURCES, Fetched, compare_with_config
from slmops.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# The source's info keys that say *what* was fetched and so belong in the (hashed) manifest. Everything
# else a source reports (where from, retries, refetched corrupt files, offline) says *how* this run went:
# it goes to the run record beside the folder, or the same files would hash differently per run.
MANIFEST_INFO = ("requested",)


def run_record_path(out: Path) -> Path:
    """Where the fetch of ``out`` records how it went: ``<out>.fetch-run.json`` beside the folder (not in it)."""
    return Path(out).with_name(f"{Path(out).name}.fetch-run.json")


def fetch(
    variant: Variant, *, out: Path, config: FetchConfig | None = None, settings: Settings | None = None
) -> Manifest:
    """Fetch ``variant`` into ``out`` (atomically, with a manifest). Raises FetchError or ConfigError.

    The manifest depends only on what was fetched; how the run went (origin, retries, time) is
    written to :func:`run_record_path`.
    """
    config = config or FetchConfig()
    settings = settings or get_settings()
    source = SOURCES[config.source]  # UnknownPluginError (a ConfigError) lists the registered ones
    # one fetch into this folder at a time: a concurrent fetch waits, then replaces the variant's folder whole
    with folder_lock(out.parent, what=f"fetching into {out.parent}"):
        with atomic_folder(out) as tmp:
            fetched = source(variant, config, tmp, settings)
            mismatches = compare_with_config(variant, tmp)
            manifest = write_manifest(
                tmp,
                stage="fetch",
                variant=variant.id,
                source=fetched.source,
                revision=fetched.revision,
                info={
                    "repo_id": variant.repo_id,
                    "catalog_mismatches": mismatches,
                    **{k: v for k, v in fetched.info.items() if k in MANIFEST_INFO},
                },
            )
        write_json_atomic(run_record_path(out), _run_record(fetched))  # once the folder it describes is in place
    logger.info("fetched %s from %s (%d files)", variant.id, fetched.origin, len(manifest.files))
    return manifest


def _run_record(fetched: Fetched) -> dict[str, Any]:
    return {
        "origin": fetched.origin,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        **{k: v for k, v in fetched.info.items() if k not in MANIFEST_INFO},
    }
