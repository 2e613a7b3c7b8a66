"""The slmops experiment in the MLflow tracking store named by the settings (connecting: runtime.registry)."""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import time
import uuid
from typing import Any

from slmops import names
from slmops.names import EXPERIMENT
from slmops.settings import Settings

logger = logging.getLogger(__name__)


def ensure_experiment(client: Any, settings: Settings, name: str = EXPERIMENT) -> str:
    """The experiment id of ``name``, created (with artifacts beside the local store) if missing, and set up for
    comparing candidates in the MLflow UI (see :func:`experiment_ui_tags`) whether new or not."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None if settings.tracking_uri else settings.resolved_artifact_root()
        experiment_id = str(client.create_experiment(name, artifact_location=location))
        tags: dict[str, str] = {}
    else:
        experiment_id, tags = str(experiment.experiment_id), dict(experiment.tags or {})
    for key, value in experiment_ui_tags(experiment_id, known=tags).items():
        client.set_experiment_tag(experiment_id, key, value)
    return experiment_id


def experiment_ui_tags(experiment_id: str, *, known: dict[str, str] | None = None) -> dict[str, str]:
    """The experiment tags that make the MLflow UI open it for comparison, less those ``known`` already holds.

    - ``mlflow.experimentKind``: "Machine learning" (runs), not "GenAI apps & agents" (traces). MLflow 3.0-3.16
      choose the experiment's default tab by it; the 3.17 UI instead follows one global GenAI / Model training
      switch (remembered per browser), which :func:`compare_url` sets through its ``workflowType`` parameter.
    - a saved view of the runs table (the UI's "Views" menu): :data:`names.COMPARE_COLUMNS` shown, runs sorted by
      decode tok/s. The UI has no server-side default columns; this view is what a link or the menu opens.
    - the description, linking to that view (unless someone replaced slmops' description with their own).
    """
    known = known or {}
    wanted = {names.TAG_EXPERIMENT_KIND: names.EXPERIMENT_KIND}
    if known.get(names.TAG_NOTE, _NOTE_START).startswith(_NOTE_START):  # never overwrite a description people wrote
        wanted[names.TAG_NOTE] = _experiment_note(experiment_id)
    out = {key: value for key, value in wanted.items() if known.get(key) != value}
    view_key = names.TAG_SAVED_VIEW_PREFIX + names.COMPARE_VIEW
    if _view_state(known.get(view_key)) != compare_view_state():
        now = int(time.time() * 1000)
        envelope = {
            "name": names.COMPARE_VIEW_NAME,
            "createdAt": now,
            "updatedAt": now,
            "state": json.dumps(compare_view_state()),
        }
        out[view_key] = json.dumps(envelope)
    return out


def compare_view_state() -> dict[str, Any]:
    """The runs-table state of the saved view (the UI's own keys: columns as "<type>.`<name>`")."""
    return {
        "selectedColumns": [f"{kind}.`{key}`" for kind, key in names.COMPARE_COLUMNS],
        "orderByKey": "{}.`{}`".format(*names.COMPARE_SORT),
        "orderByAsc": False,
        "searchFilter": "",
        "runsHiddenMode": "SHOW_ALL",
    }


def compare_url(experiment_id: str, base_url: str = "") -> str:
    """The MLflow UI address of the comparison view: the runs table with the key columns, in "Model training" mode
    (``base_url`` empty: the part after the server's address, as the UI's own links are)."""
    query = f"viewStateShareKey={names.COMPARE_VIEW}&workflowType={names.UI_WORKFLOW}"
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def run_url(experiment_id: str, run_id: str, base_url: str = "") -> str:
    """The MLflow UI address of one run (``base_url`` empty: relative to the server, as in descriptions)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


_NOTE_START = "slmops candidates:"


def _experiment_note(experiment_id: str) -> str:
    return (
        f"{_NOTE_START} one run per variant and recipe, tagged with their build (`slmops.build_id`), and "
        "`recommend` passes. "
        f"[Compare candidates]({compare_url(experiment_id)}) (decode tok/s, TTFT, peak RSS, size, PPL ratio, gate; "
        f'also under "Views": {names.COMPARE_VIEW_NAME}).'
    )


def _view_state(envelope: str | None) -> Any:
    try:
        return json.loads(json.loads(envelope or "")["state"])
    except (ValueError, KeyError, TypeError):
        return None


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
