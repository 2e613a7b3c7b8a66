"""The export stage entry point used by the CLI, DVC and the Prefect flow."""

from __future__ import annotations

import logging
from pathlib import Path

from slmops.artifacts import Manifest, atomic_folder, read_manifest, write_manifest
from slmops.catalog.schema import Variant
from slmops.errors import ConfigError
from slmops.export.config import ValidationConfig
from slmops.export.exporters import EXPORTERS, REFERENCES

logger = logging.getLogger(__name__)


def export(
    variant: Variant, *, src: Path, out: Path, exporter: str | None = None, validation: ValidationConfig | None = None
) -> Manifest:
    """Export the fetched folder ``src`` to ONNX in ``out`` (atomic, with manifest and model card).

    ``exporter`` defaults to the one the catalog names for the variant, else optimum. Every export
    is checked against PyTorch on fixed inputs (``validation`` tolerances); the diffs go to the
    manifest's ``info["validation"]``. Raises IntegrityError if ``src`` has no valid manifest,
    ConfigError for an unknown exporter or one the variant cannot use, ExportError if the export
    fails or its outputs differ beyond the tolerance.
    """
    from slmops.export.validate import validate_export  # numpy/torch only when exporting

    exporter = resolve_exporter(variant, exporter)
    fetched = read_manifest(src)  # refuse folders no finished fetch produced
    fn = EXPORTERS[exporter]  # UnknownPluginError (a ConfigError) lists the registered ones
    with atomic_folder(out) as tmp:
        card = fn(variant, Path(src), tmp)
        card.write(tmp)
        checked = validate_export(
            variant,
            src=Path(src),
            folder=tmp,
            card=card,
            config=validation or ValidationConfig(),
            reference=REFERENCES.get(exporter),
        )
        manifest = write_manifest(
            tmp,
            stage="export",
            variant=variant.id,
            source=fetched.source,
            revision=fetched.revision,
            info={"exporter": exporter, "fetch_digest": fetched.digest(), "validation": checked},
        )
    logger.info("exported %s with %s", variant.id, exporter)
    return manifest


def resolve_exporter(variant: Variant, exporter: str | None = None) -> str:
    """The exporter to use: ``exporter`` if given, else the catalog's ``exporter`` for the variant, else optimum.

    Raises ConfigError when ``exporter`` contradicts the catalog (the family needs its own modelling code).
    """
    if exporter is not None and variant.exporter is not None and exporter != variant.exporter:
        raise ConfigError(
            f"{variant.id} needs exporter {variant.exporter!r} (catalog), not {exporter!r}; "
            f"drop `exporter` from its pipeline selection or set it to {variant.exporter!r}"
        )
    return exporter or variant.exporter or "optimum"
