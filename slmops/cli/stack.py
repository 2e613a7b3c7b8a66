"""`slmops stack up|down|status`: the local PostgreSQL, MLflow server and Prefect server (slmops.stack)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slmops.cli.common import cli_errors, console, print_json

app = typer.Typer(
    help="A local PostgreSQL, MLflow tracking server, Prefect server and one Prefect worker per work pool on "
    "127.0.0.1, started and stopped as one.",
    no_args_is_help=True,
)

Dir = Annotated[
    Path | None, typer.Option("--dir", help="State folder (logs, data, artifacts); default: SLMOPS_STACK_DIR.")
]


def _config(dir: Path | None, **options: Any) -> Any:  # noqa: A002 - the option's name
    from slmops.settings import get_settings
    from slmops.stack import StackConfig

    settings = get_settings()
    return StackConfig(dir=dir or settings.stack_dir, **options)


def _show(result: Any, *, title: str) -> None:
    table = Table(title=title)
    for column in ("service", "state", "url", "pid", "log"):
        table.add_column(column, overflow="fold")
    for s in result.services:
        colour = {"running": "green", "unhealthy": "yellow"}.get(s.state, "red")
        table.add_row(s.name, f"[{colour}]{s.state}[/]", s.url or "", str(s.pid or ""), str(s.log))
    console.print(table)
    for pool, why in result.pools_without_worker.items():
        console.print(f"no worker for work pool {pool}: {why}", highlight=False, soft_wrap=True)
    if result.env:
        console.print("Point clients at the stack:", highlight=False)
        for key, value in result.env.items():
            console.print(f"export {key}={value}", highlight=False, soft_wrap=True)


@app.command("up")
@cli_errors
def up_cmd(
    dir: Dir = None,  # noqa: A002
    postgres_port: Annotated[int, typer.Option(help="PostgreSQL's port; 0: a free one.")] = 0,
    mlflow_port: Annotated[int, typer.Option(help="The MLflow server's port; 0: a free one.")] = 0,
    prefect_port: Annotated[int, typer.Option(help="The Prefect server's port; 0: a free one.")] = 0,
    build_workers: Annotated[
        int, typer.Option(min=0, help="Workers of the build pool (each builds one variant at a time).")
    ] = 1,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds per service until healthy; default: SLMOPS_STACK_TIMEOUT_S.")
    ] = None,
) -> None:
    """Start the stack (or say it is already up), wait for each service's health, print the URLs to export.

    Also creates the Prefect work pools (slmops, build, bench-<profile>) and starts one worker per pool whose
    device this machine has (--build-workers for the build pool); a pool without one is listed with why.

    Ports chosen once are reused by the next `up`. A service that fails stops what this command started.
    """
    from slmops.settings import get_settings
    from slmops.stack import up

    config = _config(
        dir,
        postgres_port=postgres_port,
        mlflow_port=mlflow_port,
        prefect_port=prefect_port,
        build_workers=build_workers,
        startup_timeout_s=timeout or get_settings().stack_timeout_s,
    )
    result = up(config)
    _show(result, title=f"stack in {config.dir}" + (" (already up)" if result.already_up else ""))
    console.print(f"or: source {config.env_file}", highlight=False)


@app.command("down")
@cli_errors
def down_cmd(
    dir: Dir = None,  # noqa: A002
    purge: Annotated[bool, typer.Option(help="Also delete the state folder: databases, artifacts, logs.")] = False,
) -> None:
    """Stop every service of the stack (process groups and every child), last started first."""
    from slmops.stack import down

    config = _config(dir)
    _show(down(config, purge=purge), title=f"stack in {config.dir}")


@app.command("status")
@cli_errors
def status_cmd(
    dir: Dir = None,  # noqa: A002
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Each service's state (running, unhealthy, stopped, exited), URL, pid and log. Exit code 1 unless all run."""
    from slmops.stack import status

    config = _config(dir)
    result = status(config)
    if as_json:
        print_json(result)
    else:
        _show(result, title=f"stack in {config.dir}")
    if not result.running:
        raise typer.Exit(1)
