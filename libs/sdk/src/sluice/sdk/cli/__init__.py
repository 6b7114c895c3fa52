"""The `sluice` command line: Azure ML CLI v2-like verbs for Sluice.

Each command group lives in its own module and is added to `app` here.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer
from opentelemetry import trace
from rich.markup import escape

from sluice.common.artifacts import ArtifactError
from sluice.common.assets import AssetKind
from sluice.common.settings import Settings
from sluice.common.supervisor import ComponentError
from sluice.common.tracing import configure_service_tracing, current_trace_id
from sluice.sdk.applied import NotApplied
from sluice.sdk.cli import (
    alert,
    assets,
    az,
    batch_deployment,
    batch_endpoint,
    compute,
    demo,
    job,
    monitor,
    online_deployment,
    online_endpoint,
    platform_cmds,
    shim,
    tls_cmds,
    token_cmds,
    trace_cmds,
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
app.command("events-url")(platform_cmds.events_url)
app.command("demo")(demo.demo)
app.add_typer(shim.app, name="shim")
app.add_typer(online_endpoint.app, name="online-endpoint")
app.add_typer(online_deployment.app, name="online-deployment")
app.add_typer(batch_endpoint.app, name="batch-endpoint")
app.add_typer(batch_deployment.app, name="batch-deployment")
app.add_typer(tls_cmds.app, name="tls")
app.add_typer(token_cmds.app, name="token")
app.add_typer(alert.app, name="alert")
app.add_typer(job.app, name="job")
app.add_typer(compute.app, name="compute")
app.add_typer(monitor.app, name="monitor")
app.add_typer(trace_cmds.app, name="trace")
for _kind in AssetKind:
    app.add_typer(assets.make_app(_kind), name=_kind.value)


@contextlib.contextmanager
def traced_command(args: list[str]) -> Iterator[None]:
    """With tracing on (SLUICE_TRACING__ENABLED), the command is the root of one trace: its
    gRPC calls carry it to the registry, and the events of the change to the services that
    act on it. The trace id is printed on stderr (`sluice trace show <id>`)."""
    settings = Settings()
    if not settings.tracing.enabled or (args and args[0] == "trace"):
        yield
        return
    configure_service_tracing("cli", settings, instrument=("grpc_client_sync",))
    words = [a for a in args[:2] if not a.startswith("-")]
    name = " ".join(["sluice", *words])
    with trace.get_tracer("sluice.cli").start_as_current_span(name) as span:
        trace_id = current_trace_id()
        try:
            yield
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            span.set_attribute("process.exit.code", code)
            if code:
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"exit code {code}"))
            raise
        finally:
            if trace_id and span.is_recording():
                err_console.print(f"trace {trace_id}", highlight=False)


def main() -> None:
    """Entry point: user errors print one line and exit 1, never a traceback.

    The command line is first given Azure's meaning (`az.normalise`): `ml`/`az ml`
    prefixes, az's global arguments, `--query`.
    """
    try:
        line = az.normalise(sys.argv[1:], typer.main.get_group(app))
        QUERY.set(line.query)
        with traced_command(line.args):
            app(args=line.args, prog_name="sluice")
    except az.AzSetupCommand as note:
        err_console.print(str(note), highlight=False)
    except az.AzReply as reply:
        sys.stdout.write(f"{reply}\n")
    except (CliError, ComponentError, SluiceError, SpecError, ArtifactError, NotApplied) as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
