"""A registered candidate measured on one device by that device's own worker (the distributed build).

The worker holds no folder of the build: it pulls the version's files from the MLflow registry into its
own cache, checks every file's sha256 against the candidate's manifest, benchmarks it on the one profile
it serves, and logs the headline numbers to the run the version was registered from, under
``bench.<profile>.<metric>`` (the build's own names, ``BenchReport.metrics``, under the profile; ranking
reads them through ``slmops.names.profile_metrics``); the run's ``slmops.bench.<profile>`` tag says
``measured`` once they are all there (set last), or why the device could not measure it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from slmops import names
from slmops.artifacts import read_manifest
from slmops.benchmark.config import BenchmarkConfig, DeviceProfile
from slmops.benchmark.harness import run_benchmark
from slmops.errors import ConfigError
from slmops.results import BenchReport
from slmops.settings import Settings

logger = logging.getLogger(__name__)


def bench_version(
    model: str,
    version: str,
    profile: str,
    *,
    config: BenchmarkConfig,
    profiles: dict[str, DeviceProfile],
    settings: Settings,
    out: Path | None = None,
) -> BenchReport:
    """Pull ``models:/<model>/<version>``, verify it, measure it on ``profile`` and log the numbers to its run.

    Raises ConfigError for an unknown profile, IntegrityError when a file's sha256 differs from the manifest,
    RegistryError when the version cannot be found or downloaded, BenchmarkError when the measurement fails.
    """
    from mlflow.entities import Metric

    from slmops.runtime.loader import locate
    from slmops.runtime.registry import connect

    if profile not in profiles:
        raise ConfigError(f"device profile {profile!r} is not in configs/devices.yaml; known: {', '.join(profiles)}")
    folder = locate(f"models:/{model}/{version}", settings=settings).folder  # this worker's cache, verified
    read_manifest(folder, verify=True)  # and again now: the cache may hold a copy verified by an earlier stamp
    report = run_benchmark(folder, config=config.model_copy(update={"profiles": [profile]}), profiles=profiles, out=out)
    client = connect(settings)
    registered = client.get_model_version(model, version)
    run_id = registered.tags.get(names.TAG_LATEST_RUN) or registered.run_id
    skipped = report.skipped()
    if profile in skipped:
        client.set_tag(run_id, names.device_bench_tag(profile), f"not measured: {skipped[profile]}")
        logger.warning("%s v%s not measured on %s: %s", model, version, profile, skipped[profile])
        return report
    now = int(time.time() * 1000)
    flat = report.metrics(
        prefix=names.device_metric("", profile), machine_prefix=names.device_metric("machine.", profile)
    )
    metrics = [Metric(key, value, now, 0) for key, value in flat.items()]
    client.log_batch(run_id, metrics=metrics)
    client.log_dict(run_id, report.model_dump(mode="json"), names.device_bench_artifact(profile))
    client.set_tag(run_id, names.device_bench_tag(profile), "measured")  # last: the numbers above are all there
    logger.info("%s v%s measured on %s: %d metrics logged to run %s", model, version, profile, len(metrics), run_id)
    return report


def mark_not_measured(model: str, version: str, profile: str, why: str, *, settings: Settings) -> None:
    """Tag the run of ``models:/<model>/<version>`` as not measured on ``profile``, saying why (its runs crashed,
    failed or never started): numbers a dead worker may have logged half of never count as measured."""
    from slmops.runtime.registry import connect

    client = connect(settings)
    registered = client.get_model_version(model, version)
    run_id = registered.tags.get(names.TAG_LATEST_RUN) or registered.run_id
    client.set_tag(run_id, names.device_bench_tag(profile), f"not measured: {why}"[:5000])  # MLflow's tag limit
    logger.warning("%s v%s not measured on %s: %s", model, version, profile, why)
