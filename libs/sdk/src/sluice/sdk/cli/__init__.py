"""The `sluice` command line: Azure ML CLI v2-like verbs for Sluice.

Each command group lives in its own module and is added to `app` here.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from sluice.common.artifacts import ArtifactError
from sluice.common.assets import AssetKind
from sluice.common.supervisor import ComponentError
from sluice.sdk.applied import NotApplied
from sluice.sdk.cli import (
    alert,
    assets,
    az,
    batch_deployment,
    batch_endpoint,
    demo,
    job,
    monitor,
    online_deployment,
    online_endpoint,
    platform_cmds,
    shim,
    tls_cmds,
)
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import QUERY, err_console
from sluice.sdk.client import SluiceError
from sluice.sdk.specs import SpecError

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
app.command("demo")(demo.demo)
app.add_typer(shim.app, name="shim")
app.add_typer(online_endpoint.app, name="online-endpoint")
app.add_typer(online_deployment.app, name="online-deployment")
app.add_typer(batch_endpoint.app, name="batch-endpoint")
app.add_typer(batch_deployment.app, name="batch-deployment")
app.add_typer(tls_cmds.app, name="tls")
app.add_typer(alert.app, name="alert")
app.add_typer(job.app, name="job")
app.add_typer(monitor.app, name="monitor")
for _kind in AssetKind:
    app.add_typer(assets.make_app(_kind), name=_kind.value)


def main() -> None:
    """Entry point: user errors print one line and exit 1, never a traceback.

    The command line is first given Azure's meaning (`az.normalise`): `ml`/`az ml`
    prefixes, az's global arguments, `--query`.
    """
    try:
        line = az.normalise(sys.argv[1:], typer.main.get_group(app))
        QUERY.set(line.query)
        app(args=line.args, prog_name="sluice")
    except az.AzSetupCommand as note:
        err_console.print(str(note), highlight=False)
    except (CliError, ComponentError, SluiceError, SpecError, ArtifactError, NotApplied) as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
