"""`sluice shim az --dir DIR`: an `az` executable that runs `az ml ...` scripts against Sluice.

Put DIR first on PATH and an existing deployment script's `az ml` and
`az monitor autoscale` commands run here unchanged. Like `az`, the forwarder
prints JSON unless `-o` says otherwise (SLUICE_OUTPUT=json).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from sluice.common.azure_ids import SUBSCRIPTION
from sluice.common.settings import Settings
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import OutputFormat, OutputOption, err_console, render
from sluice.sdk.client import admin_token

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


ResourceOption = typer.Option("", "--resource", help="ignored: one token serves all")
ScopeOption = typer.Option("", "--scope", help="ignored: one token serves all")


@app.command("az-access-token", hidden=True)
def az_access_token(
    resource: str = ResourceOption,
    scope: str = ScopeOption,
    output: OutputFormat = OutputOption,
) -> None:
    """`az account get-access-token [--resource R]` through the forwarder: the token this CLI
    sends (SLUICE_TOKEN, else the admin token), which is what Sluice's REST API and batch
    endpoints' scoring URIs take where Azure takes an Entra token (for either resource,
    https://ml.azure.com or https://management.azure.com), in az's shape."""
    settings = Settings()
    token = admin_token(settings, settings.state_dir)
    err_console.print(
        "Sluice's token (SLUICE_TOKEN, else the admin token): REST and batch scoring URIs "
        "take it as Azure takes an Entra token; it does not expire unless `sluice token "
        "create --expires-in` gave it an end.",
        markup=False,
    )
    render(
        {
            "accessToken": token,
            "expiresOn": None,
            "expires_on": None,
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
