"""The fetch stage entry point used by the CLI, DVC and the Prefect flow."""

from __future__ import annotations

import logging
from pathlib import Path

from slmops.artifacts import Manifest, atomic_folder, folder_lock, write_manifest
from slmops.catalog.schema import Variant
from slmops.fetch.config import FetchConfig
from slmops.fetch.sources import SOURCES, compare_with_config
from slmops.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def fetch(
    variant: Variant, *, out: Path, config: FetchConfig | None = None, settings: Settings | None = None
) -> Manifest:
    """Fetch ``variant`` into ``out`` (atomically, with a manifest). Raises FetchError or ConfigError."""
    config = config or FetchConfig()
    settings = settings or get_settings()
    source = SOURCES[config.source]  # UnknownPluginError (a ConfigError) lists the registered ones
    # one fetch into this folder at a time: a concurrent fetch waits, then replaces the variant's folder whole
    with folder_lock(out.parent, what=f"fetching into {out.parent}"), atomic_folder(out) as tmp:
        fetched = source(variant, config, tmp, settings)
        mismatches = compare_with_config(variant, tmp)
        manifest = write_manifest(
            tmp,
            stage="fetch",
            variant=variant.id,
            source=fetched.source,
            revision=fetched.revision,
            info={
                "origin": fetched.origin,
                "repo_id": variant.repo_id,
                "catalog_mismatches": mismatches,
                **fetched.info,
            },
        )
    logger.info("fetched %s from %s (%d files)", variant.id, fetched.origin, len(manifest.files))
    return manifest
