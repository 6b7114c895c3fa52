"""The `sluice` command line: Azure ML CLI v2-like verbs for Sluice.

Each command group lives in its own module and is added to `app` here.
"""

from __future__ import annotations

import sys

import typer

from sluice.common.supervisor import ComponentError
from sluice.sdk.cli import platform_cmds
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import err_console

app = typer.Typer(
    name="sluice",
    help="Sluice: online and batch endpoints for ML models, self-hosted.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("up")(platform_cmds.up)
app.command("status")(platform_cmds.status)
app.command("down")(platform_cmds.down)


def main() -> None:
    """Entry point: user errors print one line and exit 1, never a traceback."""
    try:
        app()
    except (CliError, ComponentError) as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
