"""`sluice shim az --dir DIR`: an `az` executable that runs `az ml ...` scripts against Sluice.

Put DIR first on PATH and an existing deployment script's `az ml` and
`az monitor autoscale` commands run here unchanged. Like `az`, the forwarder
prints JSON unless `-o` says otherwise (SLUICE_OUTPUT=json).
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import UTC
from pathlib import Path

import typer

from sluice.common.azure_ids import SUBSCRIPTION
from sluice.sdk.cli.common import registry
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import OutputFormat, OutputOption, err_console, render

app = typer.Typer(help="Executables that let other tools' scripts drive Sluice.")
DirOption = typer.Option(..., "--dir", help="folder to write the `az` forwarder into")

FORWARDER = """#!/bin/sh
# Forwards `az ml ...` and `az monitor autoscale ...` to Sluice (`sluice shim az`).
export SLUICE_OUTPUT="${{SLUICE_OUTPUT:-json}}"
exec {python} -m sluice.sdk.cli az "$@"
"""


@app.command("az")
def az(
    folder: Path = DirOption,
) -> None:
    """Write DIR/az, which forwards `az ml <group> <verb> ...` to `sluice <group> <verb> ...`
    and `az monitor autoscale ...` to `sluice monitor autoscale ...`."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "az"
    target.write_text(FORWARDER.format(python=shlex.quote(sys.executable)))
    target.chmod(0o755)
    err_console.print(f"Wrote {target}; put {folder.resolve()} first on PATH to use it.")


@app.command("az-config-get", hidden=True)
def az_config_get(
    key: str = typer.Argument("", help="a section (defaults) or section.name"),
    output: OutputFormat = OutputOption,
) -> None:
    """`az config get [KEY]` through the forwarder, answered as az answers with nothing
    configured (Sluice keeps no az configuration): no sections, `{}`; a section, `[]`;
    a key, az's "is not set" error."""
    section, _, name = key.partition(".")
    if name:
        raise CliError(
            f"Configuration '{key}' is not set (Sluice's az forwarder keeps no az configuration)"
        )
    render([] if section else {}, output)


ResourceOption = typer.Option("", "--resource", help="https://ml.azure.com (the only one)")
ScopeOption = typer.Option("", "--scope", help="https://ml.azure.com/.default (the only one)")
# The audience Azure's batch scoring URIs take (Sluice's take its own token there).
ML_AUDIENCE = "https://ml.azure.com"


# What `az account get-access-token` hands out when the CLI holds the admin token.
SCRIPT_TOKEN_S = 3600


@app.command("az-access-token", hidden=True)
def az_access_token(
    resource: str = ResourceOption,
    scope: str = ScopeOption,
    output: OutputFormat = OutputOption,
) -> None:
    """`az account get-access-token --resource https://ml.azure.com` through the forwarder:
    a token a batch endpoint's scoring URI takes where Azure takes an Entra token, in az's
    shape. Scripts send what they get here to other hosts too (Azure's own ml.azure.com
    APIs), so it is never the admin token: SLUICE_TOKEN when the user set one (their own
    token), else a deployer token made for the script that expires in an hour. Only for
    that audience: without --resource az's token is for Azure Resource Manager, which a
    script sends to https://management.azure.com."""
    asked = (resource or scope.removesuffix("/.default")).rstrip("/")
    if asked.lower() != ML_AUDIENCE:
        raise CliError(
            f"az account get-access-token for {asked or 'Azure Resource Manager (the default)'}: "
            f"Sluice's az forwarder gives a token only for --resource {ML_AUDIENCE} "
            "(batch endpoints' scoring URIs); a token for another audience would be sent to "
            "Azure itself (Sluice's REST API takes `sluice token create` tokens directly)"
        )
    if os.environ.get("SLUICE_TOKEN"):
        token, expires = os.environ["SLUICE_TOKEN"], None
    else:
        with registry() as client:
            created = client.create_token(
                "az-account-get-access-token",
                "deployer",
                "made by `az account get-access-token` for a script",
                SCRIPT_TOKEN_S,
            )
        token = created.secret
        expires = created.token.expires_at.ToDatetime(tzinfo=UTC)
        err_console.print(
            f"A deployer token for this script, expiring at {expires:%Y-%m-%d %H:%M:%S} UTC "
            "(never the admin token: scripts send it to other hosts too).",
            markup=False,
        )
    render(
        {
            "accessToken": token,
            "expiresOn": f"{expires:%Y-%m-%d %H:%M:%S.%f}" if expires else None,
            "expires_on": int(expires.timestamp()) if expires else None,
            "subscription": SUBSCRIPTION,
            "tenant": SUBSCRIPTION,
            "tokenType": "Bearer",
        },
        output,
    )


@app.command("az-account-show", hidden=True)
def az_account_show(output: OutputFormat = OutputOption) -> None:
    """`az account show`: scripts read `id` (and `tenantId`) to build Azure's long URIs;
    the answer is the subscription Sluice's resource ids carry (sluice.common.azure_ids)."""
    render(
        {
            "id": SUBSCRIPTION,
            "name": "sluice",
            "tenantId": SUBSCRIPTION,
            "isDefault": True,
            "state": "Enabled",
            "environmentName": "Sluice",
        },
        output,
    )
