"""The quantize stage entry point used by the CLI, DVC and the Prefect flow."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path

from slmops.artifacts import Manifest, atomic_folder, link_or_copy, read_manifest, write_json_atomic, write_manifest
from slmops.catalog.schema import Variant
from slmops.errors import ConfigError, QuantizeError
from slmops.quantize.ort import QUANTIZERS
from slmops.quantize.recipes import Recipe
from slmops.runtime.card import MODEL_CARD_NAME, read_model_card

logger = logging.getLogger(__name__)


def quantize(
    variant: Variant, recipe: Recipe, *, src: Path, out: Path, device: str = "cpu", fetched: Path | None = None
) -> Manifest:
    """Apply ``recipe`` to the export in ``src``, writing a complete candidate folder to ``out``.

    ``fetched`` is the fetched folder the export came from (recipes that reuse the source's
    own quantized weights read it). Raises ConfigError if the recipe does not support the variant's task or the device,
    IntegrityError if ``src`` is not a finished export, QuantizeError if quantization fails.
    """
    exported = read_manifest(src)
    if not recipe.supports(variant.task, device):
        raise ConfigError(
            f"recipe {recipe.name!r} supports tasks {recipe.tasks} on {recipe.devices}, "
            f"not {variant.task} on {device}; pick another recipe for {variant.id}"
        )
    card = read_model_card(src)
    with atomic_folder(out) as tmp:
        for rel in exported.files:
            if rel.startswith(card.onnx_file) or rel == MODEL_CARD_NAME:  # the graph and its external data
                continue
            link_or_copy(Path(src) / rel, tmp / rel)
        # ORT's tools write scratch files (sym_shape_infer_temp.onnx, <uuid>.data) into the working
        # directory: run them in a throw-away one, with absolute paths.
        graph_src, graph_dst = (Path(src) / card.onnx_file).resolve(), (tmp / card.onnx_file).resolve()
        origin = Path(fetched).resolve() if fetched is not None else None
        try:
            with tempfile.TemporaryDirectory(prefix="slmops-quantize-") as scratch, contextlib.chdir(scratch):
                QUANTIZERS[recipe.method](graph_src, graph_dst, recipe, fetched=origin)
        except QuantizeError:
            raise
        except Exception as exc:
            raise QuantizeError(f"recipe {recipe.name!r} failed on {variant.id}: {exc}") from exc
        card.replace(precision=recipe.precision, recipe=recipe.name).write(tmp)
        write_json_atomic(tmp / "recipe.json", recipe.model_dump(mode="json"))
        for leftover in tmp.glob("*-opt.onnx"):  # ORT's pre-processing scratch files
            leftover.unlink()
        shutil.rmtree(tmp / "__pycache__", ignore_errors=True)
        manifest = write_manifest(
            tmp,
            stage="quantize",
            variant=variant.id,
            source=exported.source,
            revision=exported.revision,
            info={"recipe": recipe.name, "precision": recipe.precision, "export_digest": exported.digest()},
        )
    logger.info("quantized %s with %s", variant.id, recipe.name)
    return manifest
