"""Serve the build flow as a Prefect deployment on a schedule (nightly by default), one run at a time.

``python -m flows.deploy [--cron "0 3 * * *"] [--on-overlap enqueue|cancel]`` registers the deployment
with the Prefect API in PREFECT_API_URL (start one with ``prefect server start``) and runs scheduled
runs in this process until stopped. The deployment's concurrency limit is 1: a run triggered while
another runs (the nightly one and a manual one) waits for it (``enqueue``) or is cancelled (``cancel``).
Its parameters (``variants``, ``recipes``) are documented in the UI's run form. The schedule and the
overlap rule default to ``deploy:`` in configs/pipeline.yaml.

``python -m flows.deploy --distributed`` instead declares the work pools (slmops.stack.pools: ``slmops``,
``build``, one ``bench-<profile>`` per device profile) and the deployments of flows/distributed.py on
them, and returns: the workers (``slmops stack up`` starts one per pool) run the flow runs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, cast

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from flows.build import build
from flows.distributed import VARIANT_DEPLOYMENT, bench_registered, build_distributed, build_variant

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

ON_OVERLAP = {"enqueue": ConcurrencyLimitStrategy.ENQUEUE, "cancel": ConcurrencyLimitStrategy.CANCEL_NEW}


def deployment(
    *, name: str = "nightly", cron: str | None = "0 3 * * *", on_overlap: str = "enqueue"
) -> RunnerDeployment:
    """The build flow's deployment: the schedule, a concurrency limit of 1 and what an overlapping run does."""
    made = build.to_deployment(
        name=name,
        cron=cron,
        tags=["slmops"],
        description="Rebuild, gate, benchmark and register the selected variants, then move the use-case aliases. "
        "One run at a time: a run that overlaps another "
        + ("waits for it." if on_overlap == "enqueue" else "is cancelled."),
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ON_OVERLAP[on_overlap]),
    )
    return cast("RunnerDeployment", made)  # to_deployment is sync-compatible: called here, it returns the deployment


def distributed_deployments(
    profiles: list[str],
    *,
    name: str = "nightly",
    cron: str | None = "0 3 * * *",
    on_overlap: str = "enqueue",
    heartbeat_s: int = 30,
) -> list[RunnerDeployment]:
    """The distributed build (pool ``slmops``: schedule, concurrency limit 1), its per-variant deployment (pool
    ``build``) and one benchmark deployment per device profile (pool ``bench-<profile>``). All are imported by
    module path, so a worker runs them from its own empty folder, and their runs send a heartbeat every
    ``heartbeat_s`` seconds (whatever the worker's settings), so a run whose worker died is marked Crashed."""
    from prefect.types.entrypoint import EntrypointType

    from slmops.stack.pools import BUILD_POOL, CONTROL_POOL, bench_pool

    job = {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat_s)}}

    made = build_distributed.to_deployment(
        name=name,
        cron=cron,
        tags=["slmops", "distributed"],
        description="Build each selected variant on the build workers, then move the use-case aliases. "
        "One run at a time: a run that overlaps another "
        + ("waits for it." if on_overlap == "enqueue" else "is cancelled."),
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ON_OVERLAP[on_overlap]),
        work_pool_name=CONTROL_POOL,
        entrypoint_type=EntrypointType.MODULE_PATH,
        job_variables=job,
    )
    per_variant = build_variant.to_deployment(
        name=VARIANT_DEPLOYMENT,
        tags=["slmops", "distributed"],
        description="One variant's fetch, export, quantize, gate, benchmark and register, on a build worker.",
        work_pool_name=BUILD_POOL,
        entrypoint_type=EntrypointType.MODULE_PATH,
        job_variables=job,
    )
    benches = [
        bench_registered.to_deployment(
            name=profile,
            tags=["slmops", "distributed", "benchmark"],
            description=f"Measure a registered version on device profile {profile!r}, one at a time (pool limit 1).",
            work_pool_name=bench_pool(profile),
            entrypoint_type=EntrypointType.MODULE_PATH,
            job_variables=job,
        )
        for profile in profiles
    ]
    return [cast("RunnerDeployment", d) for d in (made, per_variant, *benches)]


def declare_distributed(*, name: str = "nightly", cron: str | None = None, on_overlap: str | None = None) -> list[str]:
    """Create or update the work pools, the automation that marks runs of dead workers Crashed and the distributed
    deployments (cron and overlap rule from pipeline.yaml unless given); returns the deployment ids."""
    from prefect.client.orchestration import get_client

    from slmops.project import Project
    from slmops.stack import pools

    project = Project.load()
    deploy = project.config.deploy
    with get_client(sync_client=True) as api:
        pools.ensure_pools(api, pools.declared_pools(project.device_profiles))
        pools.ensure_zombie_automation(api, crashed_after_s=deploy.crashed_after_s)
    made = distributed_deployments(
        list(project.device_profiles),
        name=name,
        cron=cron or deploy.cron,
        on_overlap=on_overlap or deploy.on_overlap,
        heartbeat_s=deploy.heartbeat_s,
    )
    return [str(d.apply()) for d in made]


def main() -> None:
    from prefect import serve

    from slmops.project import Project

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cron", default=None, help="Schedule (cron syntax, UTC); default: pipeline.yaml's deploy.")
    parser.add_argument("--name", default="nightly")
    parser.add_argument(
        "--on-overlap", choices=list(ON_OVERLAP), default=None, help="What a run that overlaps another does."
    )
    parser.add_argument(
        "--distributed", action="store_true", help="Declare the work pools and the worker deployments, then return."
    )
    args = parser.parse_args()
    if args.distributed:
        ids = declare_distributed(name=args.name, cron=args.cron, on_overlap=args.on_overlap)
        print(f"declared {len(ids)} deployments on the work pools; `slmops stack up` starts their workers")
        return
    deploy = Project.load().config.deploy
    made = deployment(name=args.name, cron=args.cron or deploy.cron, on_overlap=args.on_overlap or deploy.on_overlap)
    serve(made, limit=1)


if __name__ == "__main__":
    main()
