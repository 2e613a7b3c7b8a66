"""Capacity of the distributed build: the tiny models built by 1 and by 2 build workers (README: Capacity).

``PYTHONPATH=. python benchmarks/capacity.py [--workers 1,2] [--recipes fp32,wo-int8]`` starts a fresh
`slmops stack up --build-workers N` per N over the tiny test models on a loopback Hub, declares the
deployments, times one build run of both tiny variants, prints the wall time with the load average before
and after, and tears the stack down. Needs PostgreSQL's programs (initdb, pg_ctl) on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def main() -> None:
    from tests.conftest import UNSET, tiny_env
    from tests.support.hubserver import HubServer
    from tests.support.tiny import build_tiny_bert, build_tiny_llama

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--recipes", default="fp32,wo-int8")
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    root = Path(tempfile.mkdtemp(prefix="slmops-capacity-"))
    models = {
        "tiny-llama": (root / "m" / "tiny-llama", build_tiny_llama(root / "m" / "tiny-llama")),
        "tiny-bert": (root / "m" / "tiny-bert", build_tiny_bert(root / "m" / "tiny-bert")),
    }
    rows = []
    with HubServer() as hub:
        for vid, (folder, _) in models.items():
            hub.state.publish_folder(f"tiny/{vid}", folder)
        for n in [int(w) for w in args.workers.split(",")]:
            home = root / f"w{n}"
            env = {k: v for k, v in os.environ.items() if k not in UNSET} | tiny_env(home, models, hub.endpoint)
            env["SLMOPS_STACK_DIR"] = str(home / "stack")
            cli = [sys.executable, "-m", "slmops.cli", "stack"]
            _run([*cli, "up", "--build-workers", str(n)], env, 900)
            try:
                status = json.loads(_run([*cli, "status", "--json"], env, 60).stdout)
                client = {**env, **status["env"]}
                _run([sys.executable, "-m", "flows.deploy", "--distributed"], client, 300)
                trigger = (
                    "from prefect.deployments import run_deployment\n"
                    "run = run_deployment('slmops-build-distributed/nightly', parameters={'variants': "
                    f"['tiny-llama', 'tiny-bert'], 'recipes': {recipes!r}}}, timeout=1800)\n"
                    "print(repr(run.state.message), file=__import__('sys').stderr)\n"
                    "print(run.state.type.value, (run.end_time - run.start_time).total_seconds())\n"
                )
                load_before = os.getloadavg()
                start = time.monotonic()
                done = _run([sys.executable, "-c", trigger], client, 2000)
                out = done.stdout.split()
                wall = time.monotonic() - start
                rows.append(
                    {
                        "build_workers": n,
                        "state": out[-2],
                        "run_s": round(float(out[-1]), 1),
                        "wall_s": round(wall, 1),
                        "load_before": [round(x, 2) for x in load_before],
                        "load_after": [round(x, 2) for x in os.getloadavg()],
                        "message": done.stderr.strip().splitlines()[-1][:500] if done.stderr.strip() else "",
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            finally:
                subprocess.run([*cli, "down"], env=env, capture_output=True, timeout=300, check=False)
                shutil.copytree(home / "stack" / "logs", root / f"logs-{n}-workers", dirs_exist_ok=True)
                subprocess.run([*cli, "down", "--purge"], env=env, capture_output=True, timeout=300, check=False)
    print(f"logs: {root}/logs-<n>-workers")
    print(json.dumps({"cpus": os.cpu_count(), "recipes": recipes, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
