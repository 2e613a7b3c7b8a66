"""Serve the build flow as a Prefect deployment on a schedule (nightly by default), one run at a time.

``python -m flows.deploy [--cron "0 3 * * *"] [--on-overlap enqueue|cancel]`` registers the deployment
with the Prefect API in PREFECT_API_URL (start one with ``prefect server start``) and runs scheduled
runs in this process until stopped. The deployment's concurrency limit is 1: a run triggered while
another runs (the nightly one and a manual one) waits for it (``enqueue``) or is cancelled (``cancel``).
Its parameters (``variants``, ``recipes``) are documented in the UI's run form.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, cast

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from flows.build import build

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


def main() -> None:
    from prefect import serve

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cron", default="0 3 * * *", help="Schedule (cron syntax, UTC).")
    parser.add_argument("--name", default="nightly")
    parser.add_argument(
        "--on-overlap", choices=list(ON_OVERLAP), default="enqueue", help="What a run that overlaps another does."
    )
    args = parser.parse_args()
    serve(deployment(name=args.name, cron=args.cron, on_overlap=args.on_overlap), limit=1)


if __name__ == "__main__":
    main()
