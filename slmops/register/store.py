"""The slmops experiment in the MLflow tracking store named by the settings (connecting: runtime.registry)."""

from __future__ import annotations

import logging
from typing import Any

from slmops.names import EXPERIMENT
from slmops.settings import Settings

logger = logging.getLogger(__name__)


def ensure_experiment(client: Any, settings: Settings, name: str = EXPERIMENT) -> str:
    """The experiment id of ``name``, created (with artifacts beside the local store) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None if settings.tracking_uri else settings.resolved_artifact_root()
    return client.create_experiment(name, artifact_location=location)
