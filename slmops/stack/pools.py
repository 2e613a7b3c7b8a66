"""The Prefect work pools of the distributed build, declared from configs/devices.yaml, and who serves them.

- ``slmops``: the build's own run (it fans out and recommends); concurrency 1, so one build at a time.
- ``build``: the per-variant runs (fetch, export, quantize, gate, register); each build worker takes one
  run at a time (``--limit 1``), so N workers build N variants at once.
- ``bench-<profile>``: one per device profile; concurrency 1, so two benchmarks never share a CPU or GPU.

A pool with no online worker is reported with the reason (:func:`missing_worker`), never waited on forever.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slmops.errors import StackError

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

    from slmops.benchmark.config import DeviceProfile

logger = logging.getLogger(__name__)

CONTROL_POOL = "slmops"
BUILD_POOL = "build"
BENCH_PREFIX = "bench-"
POOL_TYPE = "process"  # a worker runs each flow run as a subprocess in a fresh empty folder


@dataclass(frozen=True)
class Pool:
    """One work pool: its name, the pool-wide concurrency limit and the per-worker limit of its workers."""

    name: str
    description: str
    concurrency_limit: int | None  # runs in the whole pool at once; None: unlimited
    worker_limit: int | None  # runs per worker at once (`prefect worker start --limit`)
    profile: str | None = None  # the device profile benchmarked by this pool's workers


def bench_pool(profile: str) -> str:
    return f"{BENCH_PREFIX}{profile}"


def declared_pools(profiles: dict[str, DeviceProfile]) -> list[Pool]:
    """The control pool, the build pool and one benchmark pool per device profile, in that order."""
    pools = [
        Pool(CONTROL_POOL, "slmops builds: fan out per variant, then recommend (one build at a time)", 1, 1),
        Pool(BUILD_POOL, "Per-variant build runs; each build worker takes one at a time", None, 1),
    ]
    for name, profile in profiles.items():
        described = f"Benchmarks on device profile {name!r} ({profile.device}, {profile.threads} threads)"
        pools.append(Pool(bench_pool(name), described, 1, 1, profile=name))
    return pools


def client(api_url: str) -> SyncPrefectClient:
    """A Prefect client for ``api_url`` (not the PREFECT_API_URL of this process's settings)."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api_url)


def ensure_pools(api: SyncPrefectClient, pools: Iterable[Pool]) -> None:
    """Create each pool (type ``process``) or bring its description and concurrency limit to the declared ones."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    for pool in pools:
        try:
            found = api.read_work_pool(pool.name)
        except ObjectNotFound:
            api.create_work_pool(
                WorkPoolCreate(
                    name=pool.name,
                    type=POOL_TYPE,
                    description=pool.description,
                    base_job_template=template,
                    concurrency_limit=pool.concurrency_limit,
                )
            )
            logger.info("created work pool %s (concurrency limit %s)", pool.name, pool.concurrency_limit)
            continue
        if found.type != POOL_TYPE:
            raise StackError(
                f"work pool {pool.name!r} exists with type {found.type!r}, not {POOL_TYPE!r}; "
                f"delete it (prefect work-pool delete {pool.name}) and run this again"
            )
        if found.concurrency_limit != pool.concurrency_limit or found.description != pool.description:
            update = WorkPoolUpdate(description=pool.description, concurrency_limit=pool.concurrency_limit)
            api.update_work_pool(pool.name, update)


def missing_worker(api: SyncPrefectClient, pool: str) -> str | None:
    """Why ``pool`` cannot run anything now (absent, paused, or no online worker), or None when it can."""
    from prefect.client.schemas.objects import WorkerStatus
    from prefect.exceptions import ObjectNotFound

    try:
        found = api.read_work_pool(pool)
    except ObjectNotFound:
        return f"work pool {pool!r} does not exist (create it: python -m flows.deploy --distributed)"
    if found.is_paused:
        return f"work pool {pool!r} is paused (resume it: prefect work-pool resume {pool})"
    workers = api.read_workers_for_work_pool(pool)
    if not any(w.status == WorkerStatus.ONLINE for w in workers):
        seen = f"{len(workers)} known worker(s), none online" if workers else "no worker ever polled it"
        return f"no worker online in work pool {pool!r} ({seen}); start one: prefect worker start --pool {pool}"
    return None


ZOMBIE_AUTOMATION = "slmops: crash flow runs without a heartbeat"


def ensure_zombie_automation(api: SyncPrefectClient, *, crashed_after_s: int) -> None:
    """Create (or bring up to date) the automation that marks a flow run Crashed once it has sent no heartbeat for
    ``crashed_after_s`` seconds: its worker died with it (a killed process, a lost machine).

    Prefect's own recipe (docs: "Detect zombie flows"); the flow runs must send heartbeats, which the
    distributed deployments ask for (PREFECT_FLOWS_HEARTBEAT_FREQUENCY in their job variables). A run left
    Running forever would hold its pool's one slot and block whoever waits on it. The recipe arms the timer on
    a heartbeat only, so a run whose worker died after taking it (Pending: the worker starts the flow's process)
    stayed Pending until the build gave up waiting (``deploy.bench_wait_s``, an hour by default); entering
    Pending arms it too, and Running answers it. Running does not arm it: an in-process run against this server
    (``python -m flows.build`` with the stack's environment) sends no heartbeat and must not be crashed. Left
    uncovered: a worker dying between its run's Running and the first heartbeat, which the engine sends as the
    run starts.
    """
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    wanted = AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=f"A flow run Pending, or Running after a heartbeat, with no heartbeat for {crashed_after_s} s "
        "is marked Crashed (slmops).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat", "prefect.flow-run.Pending"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Running",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=crashed_after_s),
        ),
        actions=[
            ChangeFlowRunState(
                name="Crashed",
                state=StateType.CRASHED,
                force=False,
                message=f"no heartbeat for {crashed_after_s} s: its worker is gone (slmops zombie automation)",
            )
        ],
    )
    found = api.read_automations_by_name(ZOMBIE_AUTOMATION)
    if not found:
        api.create_automation(wanted)
        logger.info(
            "created automation %r (Crashed after %d s without a heartbeat)", ZOMBIE_AUTOMATION, crashed_after_s
        )
        return
    api.update_automation(found[0].id, wanted)
    for extra in found[1:]:  # two declarations raced: keep one
        api.delete_automation(extra.id)
