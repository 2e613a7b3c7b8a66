"""The export stage entry point used by the CLI, DVC and the Prefect flow."""

from __future__ import annotations

import logging
from pathlib import Path

from slmops.artifacts import Manifest, atomic_folder, read_manifest, write_manifest
from slmops.catalog.schema import Variant
from slmops.errors import ConfigError
from slmops.export.config import ValidationConfig
from slmops.export.exporters import EXPORTERS

logger = logging.getLogger(__name__)


def export(
    variant: Variant, *, src: Path, out: Path, exporter: str = "optimum", validation: ValidationConfig | None = None
) -> Manifest:
    """Export the fetched folder ``src`` to ONNX in ``out`` (atomic, with manifest and model card).

    Every export is checked against PyTorch on fixed inputs (``validation`` tolerances); the
    diffs go to the manifest's ``info["validation"]``. Raises IntegrityError if ``src`` has no
    valid manifest, ExportError if the export fails or its outputs differ beyond the tolerance.
    """
    from slmops.export.validate import validate_export  # numpy/torch only when exporting

    fetched = read_manifest(src)  # refuse folders no finished fetch produced
    try:
        fn = EXPORTERS[exporter]
    except KeyError:
        raise ConfigError(f"unknown exporter {exporter!r}; use one of {', '.join(EXPORTERS)}") from None
    with atomic_folder(out) as tmp:
        card = fn(variant, Path(src), tmp)
        card.write(tmp)
        checked = validate_export(variant, src=Path(src), folder=tmp, card=card, config=validation or ValidationConfig())
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
