"""Open a verified artifact folder as the runtime model for its task."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, TypeVar

from slmops.artifacts import read_manifest
from slmops.errors import ModelLoadError, TaskMismatchError, UnknownTaskError
from slmops.runtime.card import read_model_card
from slmops.runtime.session import create_session
from slmops.runtime.tokenizer import Tokenizer
from slmops.settings import default_threads
from slmops.tasks import get_task

if TYPE_CHECKING:
    from slmops.runtime.decoder import TextModel
    from slmops.runtime.encoder import EmbeddingModel, RerankModel
    from slmops.runtime.fillmask import FillMaskModel

    Model: TypeAlias = TextModel | EmbeddingModel | RerankModel | FillMaskModel
else:  # the runtime classes are imported by the task table on first use, not here
    from slmops.runtime.base import LoadedModel as Model

M = TypeVar("M")


def expect(model: Model, kind: type[M], *, target: str, doing: str) -> M:
    """``model`` as a ``kind``; raises TaskMismatchError saying ``target``'s task cannot ``doing``."""
    if not isinstance(model, kind):
        raise TaskMismatchError(f"model {target!r} is a {model.card.task} model and cannot {doing}")
    return model


def open_folder(
    folder: Path,
    *,
    device: str = "cpu",
    threads: int | None = None,
    verify: bool = True,
    optimized_dir: Path | None = None,
    huge_pages: bool = True,
) -> Model:
    """The runtime model for an artifact folder. Raises IntegrityError on a bad manifest/hash, ModelLoadError otherwise.

    ``optimized_dir`` keeps onnxruntime's optimized graph between opens (see :mod:`slmops.runtime.session`), and
    under ``tokenizers/`` a tokenizer.json that parses faster (:func:`slmops.runtime.tokenizer.quick_parse_copy`);
    ``huge_pages`` moves the prepacked CPU weights onto 2 MB pages in a thread started when the model's first run
    ends (:mod:`slmops.runtime.pages`; ``wait_for_huge_pages`` there starts it at once and waits for it).
    """
    folder = Path(folder)
    read_manifest(folder, verify=verify)
    card = read_model_card(folder)
    try:
        spec = get_task(card.task)
    except UnknownTaskError as exc:
        raise ModelLoadError(f"{folder}: {exc}") from None
    if card.graph not in spec.graphs:
        raise ModelLoadError(
            f"{folder} holds a {card.graph!r} graph, which the {card.task} runtime does not open "
            f"(it opens {', '.join(spec.graphs)}); re-export it"
        )
    cls = spec.runtime_class()
    # The tokenizer first: the 13 MB its JSON parse frees is then reused by the session's allocations instead of
    # staying on the heap beside them. SmolLM2 gguf-q4, one request: peak RSS 279 MB against 293 (2026-12-01).
    # Not beside the session on another thread: 0.05-0.08 s sooner, but 4.4 MB more peak RSS (README, cold start).
    tokenizer = Tokenizer(folder, parse_cache=None if optimized_dir is None else Path(optimized_dir) / "tokenizers")
    # A runtime that sends several runs at once (the encoders' length buckets) gets them on CPU, ``threads`` at a
    # time, from one session whose intra-op threads sleep instead of spinning between parallel sections (a
    # spinning pool oversubscribes the cores once two runs share them); see slmops/runtime/encoder.py.
    concurrent = device == "cpu" and getattr(cls, "concurrent_runs", False)
    session = create_session(
        folder / card.onnx_file,
        device=device,
        threads=threads,
        optimized_dir=optimized_dir,
        huge_pages=huge_pages,
        config={"session.intra_op.allow_spinning": "0"} if concurrent else None,
    )
    if concurrent:
        return cls(folder, card, session, tokenizer=tokenizer, workers=threads or default_threads())
    return cls(folder, card, session, tokenizer=tokenizer)
