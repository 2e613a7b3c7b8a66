"""The MLflow pyfunc flavour of an slmops candidate, so `mlflow models serve` and the UI work with it.

``predict`` takes a ``str``, a ``list[str]``, a DataFrame, a list of row dicts or a dict of lists.
What the columns mean, the signature and the outputs are the task module's (``signature``,
``predict``, ``TEXT_COLUMN`` in :mod:`slmops.taskdefs`): a prompt or chat ``messages`` (JSON) for
causal-lm, ``text`` for sentence-embedding and fill-mask, ``query`` + ``document`` for cross-encoder.
Generation options and fill-mask's ``top_k`` travel as MLflow ``params``. An input that does not
fit raises PyfuncInputError naming the expected columns; nothing is silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd  # mlflow.pyfunc imports it anyway; named for predict's type hint
from mlflow.pyfunc import PythonModel

from slmops.errors import PyfuncInputError
from slmops.names import ARTIFACT_KEY
from slmops.tasks import get_task


class SlmopsModel(PythonModel):
    """Wraps the slmops runtime model opened from the logged artifact folder."""

    def load_context(self, context: Any) -> None:
        from slmops.runtime.open import open_folder

        self.model = open_folder(context.artifacts[ARTIFACT_KEY])
        self.task = get_task(self.model.card.task).impl()

    # The DataFrame hint is what MLflow passes under the column signatures; MLflow infers nothing from it (no data
    # validation, as without a hint) and no longer warns "Add type hints to the `predict` method". Direct callers
    # may pass any input rows() reads.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[Any]:
        return self.task.predict(self.model, rows(model_input, self.task.TEXT_COLUMN), params or {})

    def predict_stream(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> Iterator[str]:
        stream = getattr(self.task, "predict_stream", None)
        if stream is None:
            raise PyfuncInputError(f"a {self.model.card.task} model does not stream; call predict()")
        yield from stream(self.model, rows(model_input, self.task.TEXT_COLUMN), params or {})


def rows(model_input: Any, text_column: str | None) -> list[dict[str, Any]]:
    """``model_input`` as a list of row dicts; a bare string (or list of them) fills ``text_column``."""
    if hasattr(model_input, "to_dict"):  # a DataFrame
        found = [row for record in model_input.to_dict(orient="records") for row in _explode(record)]
        if not found or not any(found[0]):  # MLflow dropped every column the signature does not name
            raise PyfuncInputError(
                f"the input has no column the model reads (got {list(getattr(model_input, 'columns', []))}); "
                f"pass a DataFrame or dict of lists with the signature's columns ({text_column or 'query, document'})"
            )
        return found
    if isinstance(model_input, dict):
        values = [v if isinstance(v, list) else [v] for v in model_input.values()]
        if len({len(v) for v in values}) > 1:
            raise PyfuncInputError(f"the columns {list(model_input)} have different lengths {[len(v) for v in values]}")
        return [dict(zip(model_input, row, strict=True)) for row in zip(*values, strict=True)]
    items = model_input if isinstance(model_input, list) else [model_input]
    if not items:
        raise PyfuncInputError("the input is empty; pass at least one row")
    out = []
    for item in items:
        if isinstance(item, dict):
            out.append(item)
        elif isinstance(item, str) and text_column is not None:
            out.append({text_column: item})
        else:
            expected = "str, list[str], " if text_column else ""
            raise PyfuncInputError(
                f"cannot read {type(item).__name__} {item!r:.60} as a row; pass {expected}a DataFrame, "
                "a list of row dicts or a dict of lists"
            )
    return out


def _explode(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per element where every list-valued cell holds one value per row.

    MLflow turns a dict of string lists (``{"prompt": ["a", "b"]}``) into a single DataFrame row whose
    cells are the lists; this undoes that.
    """
    lists = {k: list(v) for k, v in record.items() if isinstance(v, list | tuple) or hasattr(v, "tolist")}
    if not lists:
        return [record]
    lengths = {len(v) for v in lists.values()}
    if len(lengths) > 1:
        raise PyfuncInputError(f"the columns {sorted(lists)} hold lists of different lengths {sorted(lengths)}")
    return [{**record, **{k: v[i] for k, v in lists.items()}} for i in range(lengths.pop())]
