"""The MLflow pyfunc flavour of an slmops candidate, so `mlflow models serve` and the UI work with it.

``predict`` takes a ``str``, a ``list[str]``, a DataFrame, a list of row dicts or a dict of lists, through
``mlflow.pyfunc.load_model`` and through ``mlflow models serve`` (``{"inputs": ...}``, ``{"dataframe_records": ...}``).
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
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
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

    # MLflow hands predict the caller's input unchanged (the signature declares no input schema), so model_input
    # is anything rows() reads. The DataFrame hint is one MLflow infers nothing from: no type-hint validation (which
    # would refuse a str or a dict of lists), and no "Add type hints to the `predict` method" warning.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[Any]:
        try:
            return self.task.predict(self.model, rows(model_input, self.task.TEXT_COLUMN), params or {})
        except PyfuncInputError as exc:
            raise InputRefused(str(exc)) from None

    def predict_stream(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> Iterator[str]:
        stream = getattr(self.task, "predict_stream", None)
        try:
            if stream is None:
                raise PyfuncInputError(f"a {self.model.card.task} model does not stream; call predict()")
            deltas = stream(self.model, rows(model_input, self.task.TEXT_COLUMN), params or {})
        except PyfuncInputError as exc:
            raise InputRefused(str(exc)) from None
        yield from deltas


class InputRefused(PyfuncInputError, MlflowException):
    """A PyfuncInputError that MLflow's scoring server (``mlflow models serve``) answers as a 400 with its message;
    any other exception there becomes a 400 saying only "an unexpected error"."""

    def __init__(self, message: str) -> None:
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


def rows(model_input: Any, text_column: str | None) -> list[dict[str, Any]]:
    """``model_input`` as a list of row dicts; a bare string (or list of them) fills ``text_column``.

    Reads what ``mlflow.pyfunc.load_model(...).predict`` passes on unchanged (the signature declares no input
    schema, see :func:`slmops.taskdefs.causal_lm.signature`) and what MLflow's scoring server parses from
    ``{"inputs": ...}`` (numpy arrays) or ``{"dataframe_records"/"dataframe_split": ...}`` (a DataFrame).
    """
    expected = f"a str, a list of str, or {_columns(text_column)}" if text_column else _columns(text_column)
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # a DataFrame
        records = [{k: _plain(v) for k, v in r.items()} for r in model_input.to_dict(orient="records")]
        found = [row for record in records for row in _explode(record)]
    elif isinstance(model_input, dict):
        values = {k: _plain(v) for k, v in model_input.items()}
        found = _explode(values)
    else:
        items = _plain(model_input)
        found = []
        for item in items if isinstance(items, list) else [items]:
            item = _plain(item)
            if isinstance(item, dict):
                found.append({k: _plain(v) for k, v in item.items()})
            elif isinstance(item, str) and text_column is not None:
                found.append({text_column: item})
            else:
                raise PyfuncInputError(f"cannot read {type(item).__name__} {item!r:.60} as a row; pass {expected}")
    if not found:
        raise PyfuncInputError(f"the input is empty; pass {expected}")
    return found


def _columns(text_column: str | None) -> str:
    names = f"a {text_column!r} column" if text_column else "'query' and 'document' columns"
    return f"a DataFrame, a dict of lists or a list of row dicts with {names}"


def _plain(value: Any) -> Any:
    """numpy arrays and scalars (MLflow's parsing of JSON) as Python lists and values."""
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, str) else value


def _explode(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per element where every list-valued cell holds one value per row.

    A dict of lists (``{"prompt": ["a", "b"]}``) is two rows; a dict of scalars is one.
    """
    lists = {k: v for k, v in record.items() if isinstance(v, list | tuple)}
    if not lists:
        return [record]
    lengths = {len(v) for v in lists.values()}
    if len(lengths) > 1:
        raise PyfuncInputError(f"the columns {sorted(lists)} hold lists of different lengths {sorted(lengths)}")
    return [{**record, **{k: v[i] for k, v in lists.items()}} for i in range(lengths.pop())]
