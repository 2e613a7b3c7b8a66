"""The MLflow pyfunc flavour of an slmops candidate, so `mlflow models serve` and the UI work with it.

Inputs are a DataFrame (or list/dict) with one text column: ``prompt`` (causal-lm,
optionally ``messages`` as JSON), ``text`` (sentence-embedding; fill-mask, holding the mask
token, answered with the JSON of :meth:`FillMaskModel.fill_mask`) or ``query`` + ``document``
(cross-encoder). Generation options and fill-mask's ``top_k`` travel as MLflow ``params``.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow.pyfunc
import pandas as pd  # mlflow.pyfunc imports it anyway; named for predict's type hint

from slmops.register.names import ARTIFACT_KEY


class SlmopsModel(mlflow.pyfunc.PythonModel):
    """Wraps the slmops runtime model opened from the logged artifact folder."""

    def load_context(self, context):
        from slmops.runtime.open import open_folder

        self.model = open_folder(context.artifacts[ARTIFACT_KEY])

    # The DataFrame hint is what MLflow passes under the column signatures below; MLflow infers nothing from it
    # (no data validation, as without a hint) and no longer warns "Add type hints to the `predict` method".
    def predict(self, context, model_input: pd.DataFrame, params=None):
        rows = _rows(model_input)
        task = self.model.card.task
        if task == "causal-lm":
            options = {k: v for k, v in (params or {}).items() if v is not None}
            out: list[str | None] = [None] * len(rows)
            plain = []  # rows with a plain prompt go through generate_batch together
            for i, row in enumerate(rows):
                messages = row.get("messages")
                if isinstance(messages, str) and messages:
                    out[i] = self.model.generate(messages=json.loads(messages), **options)
                else:
                    plain.append(i)
            if plain:
                texts = self.model.generate_batch([rows[i].get("prompt") for i in plain], **options)
                for i, text in zip(plain, texts):
                    out[i] = text
            return out
        if task == "sentence-embedding":
            return self.model.embed([row.get("text") for row in rows]).tolist()
        if task == "fill-mask":
            top_k = (params or {}).get("top_k") or 5
            return [json.dumps(self.model.fill_mask(row.get("text"), top_k=int(top_k))) for row in rows]
        return [float(self.model.scores(row.get("query"), [row.get("document")])[0]) for row in rows]


def _rows(model_input: Any) -> list[dict[str, Any]]:
    if hasattr(model_input, "to_dict"):
        return model_input.to_dict(orient="records")
    if isinstance(model_input, dict):
        keys = list(model_input)
        values = [v if isinstance(v, list) else [v] for v in model_input.values()]
        return [dict(zip(keys, row)) for row in zip(*values)]
    if isinstance(model_input, list):
        return [r if isinstance(r, dict) else {"prompt": r, "text": r} for r in model_input]
    return [{"prompt": model_input, "text": model_input}]


def signature_for(task: str):
    """An explicit signature (inputs and generation params) per task; no model run to infer it."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    if task == "causal-lm":
        inputs = Schema([ColSpec("string", "prompt", required=False), ColSpec("string", "messages", required=False)])
        params = ParamSchema(
            [
                ParamSpec("max_tokens", "long", 256),
                ParamSpec("temperature", "double", 0.7),
                ParamSpec("top_k", "long", 0),
                ParamSpec("top_p", "double", 1.0),
                ParamSpec("repetition_penalty", "double", 1.0),
                ParamSpec("seed", "long", None),
            ]
        )
        return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("string")]), params=params)
    if task == "sentence-embedding":
        return ModelSignature(inputs=Schema([ColSpec("string", "text")]))
    if task == "fill-mask":
        return ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema([ColSpec("string")]),
                              params=ParamSchema([ParamSpec("top_k", "long", 5)]))
    return ModelSignature(inputs=Schema([ColSpec("string", "query"), ColSpec("string", "document")]), outputs=Schema([ColSpec("double")]))
