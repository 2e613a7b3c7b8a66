"""Record a build made outside DVC (the Prefect flow) in dvc.lock, so `dvc repro` after it has nothing to do.

The flow calls the same :mod:`slmops.pipeline` functions as the commands in dvc.yaml, with the same
configs, so its outputs are what `dvc repro` would build. DVC only knows that from dvc.lock: a stage
whose lock entry does not match its deps and outs is run again. ``dvc commit --force <stages>`` is
DVC's tool for exactly this: it hashes the stages' current deps, params and outs and writes them to
dvc.lock without running anything. The stage outputs being deterministic (no timestamps, paths or
run ids in hashed files) is what makes the recorded hashes also match a later rebuild of the same inputs.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slmops.project import Project

logger = logging.getLogger(__name__)

# dvc.yaml's per-variant stages, in order (the CLI calls the benchmark stage `bench`)
VARIANT_STAGES = ("fetch", "export", "quantize", "evaluate", "bench", "register")


def dvc_root(project: Project, *, cwd: Path | None = None) -> Path | None:
    """The DVC project the build wrote into: ``cwd`` when it holds dvc.yaml and .dvc/ and the project's artifacts
    and configs are the ``artifacts/`` and ``configs/`` that dvc.yaml names; else None."""
    root = Path(cwd or Path.cwd()).resolve()
    if not (root / "dvc.yaml").is_file() or not (root / ".dvc").is_dir():
        return None
    same = (
        project.settings.artifacts_dir.resolve() == root / "artifacts"
        and project.settings.config_dir.resolve() == root / "configs"
    )
    return root if same else None


def record_build(
    project: Project, variants: Sequence[str], *, recommend: bool, cwd: Path | None = None
) -> list[str] | None:
    """Write the stages of ``variants`` (every stage of each, all finished) and, with ``recommend``, the
    recommend stage to dvc.lock. Returns the stages recorded, or None when there was nothing to record in
    (not a DVC project, or artifacts/configs elsewhere) or DVC refused.

    Call it only after a build that used the pipeline configs as they are now. It never raises: a build
    that DVC cannot record is still a good build, so the refusal is logged with the command to run by hand.
    """
    root = dvc_root(project, cwd=cwd)
    if root is None:
        logger.debug("not recording the build in dvc.lock: %s is not the DVC project of this build", cwd or Path.cwd())
        return None
    stages = [f"{stage}@{variant}" for variant in variants for stage in VARIANT_STAGES]
    if recommend:
        stages.append("recommend")
    if not stages:
        return []
    command = [sys.executable, "-m", "dvc", "commit", "--force", *stages]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = [line for line in (done.stderr + done.stdout).splitlines() if line.startswith("ERROR")]
        logger.warning(
            "could not record the build in %s (%s); `dvc repro` will rebuild those stages unless you run `%s`",
            root / "dvc.lock",
            detail[-1] if detail else f"exit {done.returncode}",
            "dvc commit --force " + " ".join(stages),
        )
        return None
    logger.info("recorded %d stages in %s", len(stages), root / "dvc.lock")
    return stages
