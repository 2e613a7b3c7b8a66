"""Connecting to the MLflow tracking server/registry named by the settings."""

from __future__ import annotations

import logging
from typing import Any

from slmops.register.names import EXPERIMENT
from slmops.settings import Settings

logger = logging.getLogger(__name__)


def connect(settings: Settings) -> Any:
    """Point mlflow at the configured store (creating the local one under mlruns/ if needed); return a client."""
    import mlflow
    from mlflow import MlflowClient

    from slmops.quiet import mlflow_store_init_quiet

    uri = settings.resolved_tracking_uri()
    if not settings.tracking_uri:
        settings.mlruns_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with mlflow_store_init_quiet():  # the client opens the store, creating a fresh SQLite one's tables
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: Any, settings: Settings, name: str = EXPERIMENT) -> str:
    """The experiment id of ``name``, created (with artifacts beside the local store) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None if settings.tracking_uri else settings.resolved_artifact_root()
    return client.create_experiment(name, artifact_location=location)
