"""Serve the build flow as a Prefect deployment on a schedule (nightly by default).

``python -m flows.deploy [--cron "0 3 * * *"]`` registers the deployment with the Prefect
API in PREFECT_API_URL (start one with ``prefect server start``) and runs scheduled runs
in this process until stopped.
"""

from __future__ import annotations

import argparse

from flows.build import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cron", default="0 3 * * *", help="Schedule (cron syntax, UTC).")
    parser.add_argument("--name", default="nightly")
    args = parser.parse_args()
    build.serve(name=args.name, cron=args.cron, tags=["slmops"], description="Rebuild, gate, benchmark and register.")


if __name__ == "__main__":
    main()
