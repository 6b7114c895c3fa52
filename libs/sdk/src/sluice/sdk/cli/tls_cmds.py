"""`sluice tls trust`: trust the local platform's CA (see `sluice.sdk.trust`)."""

from __future__ import annotations

import typer

from sluice.common.settings import Settings
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import console
from sluice.sdk.trust import TrustError, trust

app = typer.Typer(help="The local platform's TLS certificate authority.", no_args_is_help=True)


@app.command("trust")
def trust_cmd(
    system: bool | None = typer.Option(
        None,
        "--system/--no-system",
        help="Add the CA to the system trust store (default: when running as root).",
    ),
) -> None:
    """Let curl, Python and other clients verify the gateway without --cacert, as mkcert does."""
    ca = Settings().state_dir.absolute() / "tls" / "ca.crt"
    try:
        lines = trust(ca, system=system)
    except TrustError as exc:
        raise CliError(str(exc)) from exc
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
