"""Open a verified artifact folder as the runtime model for its task."""

from __future__ import annotations

from pathlib import Path

from slmops.artifacts import read_manifest
from slmops.export.modelcard import read_model_card
from slmops.runtime.decoder import TextModel
from slmops.runtime.encoder import EmbeddingModel, RerankModel
from slmops.runtime.fillmask import FillMaskModel
from slmops.runtime.session import create_session

MODEL_CLASSES = {
    "causal-lm": TextModel,
    "sentence-embedding": EmbeddingModel,
    "cross-encoder": RerankModel,
    "fill-mask": FillMaskModel,
}

Model = TextModel | EmbeddingModel | RerankModel | FillMaskModel


def open_folder(
    folder: Path, *, device: str = "cpu", threads: int | None = None, verify: bool = True,
    optimized_dir: Path | None = None,
) -> Model:
    """The runtime model for an artifact folder. Raises IntegrityError on a bad manifest/hash, ModelLoadError otherwise.

    ``optimized_dir`` keeps onnxruntime's optimized graph between opens (see :mod:`slmops.runtime.session`).
    """
    folder = Path(folder)
    read_manifest(folder, verify=verify)
    card = read_model_card(folder)
    cls = MODEL_CLASSES.get(card.task)
    if cls is None:
        from slmops.errors import ModelLoadError

        raise ModelLoadError(f"the runtime does not serve task {card.task!r} yet (served: {', '.join(MODEL_CLASSES)})")
    session = create_session(folder / card.onnx_file, device=device, threads=threads, optimized_dir=optimized_dir)
    return cls(folder, card, session)
