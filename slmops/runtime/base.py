"""What every runtime model shares: its folder, model card, memory footprint and unload()."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from slmops.errors import ModelLoadError
from slmops.runtime.card import ModelCard
from slmops.runtime.pages import wait_for_huge_pages

# Resident memory of the runtime before any weights: Python, numpy, onnxruntime, tokenizers, slmops (60 MB
# measured by benchmarks/memory.py on 2026-12-01, after the loader's records replaced pydantic) and an
# onnxruntime session's own structures (10-16 MB; 72 balances the estimate's error over the rows of
# tests/unit/test_estimate.py, -8.1% to +9.3% since 2026-12-02, when the estimate of a built candidate took its
# own bytes per weight). Used by the memory guard, the pool's budget and the catalog's estimate.
RUNTIME_OVERHEAD_BYTES = 72 * 2**20


def weights_bytes(folder: Path, card: ModelCard) -> int:
    """Bytes of the graph and its external data (model.onnx_data or model.onnx.data): what the weights cost loaded."""
    return sum(p.stat().st_size for p in Path(folder).glob(f"{card.onnx_file}*") if p.is_file())


class LoadedModel:
    """Base of the task models; subclasses drop their onnxruntime session in ``_release``."""

    # whether a call may send several session runs at once: ``open_folder`` then gives the model ``workers``
    concurrent_runs: ClassVar[bool] = False

    def __init__(self, folder: Path, card: ModelCard) -> None:
        self.folder = Path(folder)
        self.card = card
        self._loaded = True

    @property
    def is_loaded(self) -> bool:
        return self._loaded

    @property
    def footprint_bytes(self) -> int:
        """Bytes of the graph and its external data: what the weights cost once loaded."""
        return weights_bytes(self.folder, self.card)

    def unload(self) -> None:
        """Release the onnxruntime session (and with it the weights); the model cannot be used afterwards."""
        if self._loaded:
            # an open's huge-page collapse may still run on these weights: freed under it, their addresses could be
            # reused by a new mapping, which MADV_COLLAPSE would fill in (slmops/runtime/pages.py)
            wait_for_huge_pages(timeout=10.0)
            self._release()
            self._loaded = False

    def warm_up(self) -> None:
        """Run one short inference, so the first request after a load (or a hot swap) does not pay for it."""
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise ModelLoadError(
                f"{self.card.variant} ({self.card.recipe}) was unloaded; load it again with slmops.load()"
            )
