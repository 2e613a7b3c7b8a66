"""``slmops-model.json``: what the runtime needs to open an artifact folder without the catalog."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from slmops.errors import ModelLoadError, RecordError
from slmops.records import Record
from slmops.tasks import GraphKind, TaskName

MODEL_CARD_NAME = "slmops-model.json"


@dataclass(frozen=True, kw_only=True)
class Pooling(Record):
    """sentence-transformers pooling, read from 1_Pooling/config.json and modules.json."""

    mode: Literal["mean", "cls", "max"] = "mean"
    normalize: bool = True


@dataclass(frozen=True, kw_only=True)
class ModelCard(Record):
    """Self-description of an exported/quantized artifact folder (a record: the loader reads it on every open)."""

    variant: str
    task: TaskName
    graph: GraphKind
    onnx_file: str = "model.onnx"
    precision: str = "fp32"
    recipe: str = "fp32"
    context_length: int
    eos_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    pooling: Pooling | None = None
    num_labels: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    layers: int | None = None

    def write(self, folder: Path) -> None:
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False)  # as pydantic's model_dump_json wrote it
        (Path(folder) / MODEL_CARD_NAME).write_text(text + "\n", encoding="utf-8")


def read_model_card(folder: Path) -> ModelCard:
    """Parse the folder's model card; raises ModelLoadError saying what to re-run."""
    path = Path(folder) / MODEL_CARD_NAME
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ModelLoadError(
            f"{folder} has no {MODEL_CARD_NAME}; it is not an slmops export. Run `slmops export` first"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); re-run `slmops export`") from None
    try:
        return ModelCard.from_dict(data)
    except RecordError as exc:
        raise ModelLoadError(f"{path} is invalid ({exc}); re-run `slmops export`") from None


def read_pooling(folder: Path) -> Pooling | None:
    """Pooling of a sentence-transformers folder (modules.json + 1_Pooling/config.json), or None."""
    modules_path = Path(folder) / "modules.json"
    if not modules_path.is_file():
        return None
    modules = json.loads(modules_path.read_text())
    types = [m.get("type", "") for m in modules]
    pooling_path = Path(folder) / "1_Pooling" / "config.json"
    mode: Literal["mean", "cls", "max"] = "mean"
    if pooling_path.is_file():
        cfg = json.loads(pooling_path.read_text())
        if cfg.get("pooling_mode_cls_token"):
            mode = "cls"
        elif cfg.get("pooling_mode_max_tokens"):
            mode = "max"
    return Pooling(mode=mode, normalize=any(t.endswith("Normalize") for t in types))
