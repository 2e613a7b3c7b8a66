"""The `slmops` command line (typer). Every error becomes one line on stderr and exit code 1."""

from __future__ import annotations

from typing import Annotated

import typer

from slmops.cli import catalog as catalog_cmds
from slmops.cli import run as run_cmds
from slmops.cli import stack as stack_cmds
from slmops.cli import stages
from slmops.cli.common import cli_errors, setup_logging, stop_children_on_sigterm
from slmops.cli.doctor import doctor

app = typer.Typer(
    name="slmops",
    help="Small language models from the Hub to production: fetch, export, quantize, gate, benchmark, register, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
@cli_errors  # a bad SLMOPS_* variable is one red line, not a traceback
def _root(
    ctx: typer.Context,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="-v info, -vv debug.")] = 0,
) -> None:
    setup_logging(verbose)
    if ctx.invoked_subcommand in stages.COMMANDS:  # a stage's benchmark or builder subprocess ends with it
        stop_children_on_sigterm()


app.add_typer(catalog_cmds.app, name="catalog")
app.command("estimate")(cli_errors(catalog_cmds.estimate))
for _name, _fn in stages.COMMANDS.items():
    app.command(_name)(_fn)
app.command("generate")(run_cmds.generate)
app.command("embed")(run_cmds.embed)
app.command("demo")(run_cmds.demo)
app.command("serve")(run_cmds.serve)
app.command("doctor")(doctor)
app.add_typer(stack_cmds.app, name="stack")


def main() -> None:
    app()
