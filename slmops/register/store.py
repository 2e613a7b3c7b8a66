"""The slmops experiment in the MLflow tracking store named by the settings (connecting: runtime.registry)."""

from __future__ import annotations

import functools
import logging
import subprocess
import uuid
from typing import Any

from slmops import names
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


_PROCESS_BUILD_ID = uuid.uuid4().hex[:12]  # one build per process when neither Prefect nor the settings name one


def build_tags(settings: Settings) -> dict[str, str]:
    """Tags grouping the runs of one build: build id, Prefect flow-run id (inside a flow) and the project's git sha."""
    flow_run = _prefect_flow_run_id()
    tags = {names.TAG_BUILD_ID: settings.build_id or flow_run or _PROCESS_BUILD_ID}
    if flow_run:
        tags[names.TAG_FLOW_RUN] = flow_run
    sha = _git_sha()
    if sha:
        tags[names.TAG_GIT_SHA] = sha
    return tags


def _prefect_flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run
    except ImportError:  # the runtime-only install has no prefect
        return None
    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


@functools.cache  # a build registers many candidates; the checkout does not change under it
def _git_sha() -> str | None:
    """HEAD of the git checkout the process runs in (with '-dirty' when it has uncommitted changes), else None."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
