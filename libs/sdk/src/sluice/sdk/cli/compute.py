"""`sluice compute ...` (`az ml compute`): accepted so az scripts run; nothing is provisioned.

Sluice has no compute to create: online deployments run as inference-server processes
(pods with SLUICE_KUBECONFIG) and batch jobs as worker processes on the platform's
machine, and a deployment's `compute: azureml:<name>` is kept as a name. Azure's batch
scripts start with `az ml compute create -n batch-cluster ...` under `set -e`, so these
commands succeed without calling the platform, say on stderr that nothing was
provisioned, and print the compute as az does (`name`, `type`, `provisioning_state`,
and the size and instance counts given), so a script's `--query` reads what it expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sluice.common.azure_ids import RESOURCE_GROUP, resource_id
from sluice.sdk.azure_views import LOCATION
from sluice.sdk.cli.common import FileOption, NoWaitOption, SetOption, optional_path
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import OutputFormat, OutputOption, err_console, render
from sluice.sdk.specs import read_yaml

app = typer.Typer(
    help="Accepted for az scripts: Sluice provisions no compute (see `create --help`).",
    no_args_is_help=True,
)

NOTHING_PROVISIONED = (
    "Sluice provisions no compute: online deployments run as inference-server processes "
    "(pods with SLUICE_KUBECONFIG) and batch jobs as worker processes; a deployment's "
    "`compute: azureml:<name>` is kept as a name"
)
# What az gives an amlcompute cluster created with no more than its name and type.
AMLCOMPUTE_DEFAULTS: dict[str, Any] = {
    "size": "STANDARD_DS3_V2",
    "min_instances": 0,
    "max_instances": 1,
    "idle_time_before_scale_down": 120,
    "tier": "dedicated",
}

NameOption = typer.Option(..., "--name", "-n", help="the compute's name")
MinOption = typer.Option(None, "--min-instances", help="echoed; nothing is provisioned")
MaxOption = typer.Option(None, "--max-instances", help="echoed; nothing is provisioned")
IdleOption = typer.Option(
    None, "--idle-time-before-scale-down", help="seconds; echoed, nothing is provisioned"
)


def _view(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {
        **fields,
        "id": resource_id("computes", name),
        "location": LOCATION,
        "name": name,
        "provisioning_state": "Succeeded",
        "resourceGroup": RESOURCE_GROUP,
    }


IdentityTypeOption = typer.Option(
    None, "--identity-type", help="system_assigned or user_assigned; echoed (no identities here)"
)
UserIdentitiesOption = typer.Option(
    None, "--user-assigned-identities", help="identity resource ids; echoed"
)


def _given(**flags: Any) -> dict[str, Any]:
    return {key: value for key, value in flags.items() if value is not None}


def _identity(kind: str | None, user_assigned: str | None) -> dict[str, Any]:
    """az's `identity` of a compute, as given: Sluice has no managed identities, so none is
    made (deploy-mlcompute-*.sh create computes with one)."""
    if kind is None and user_assigned is None:
        return {}
    identity: dict[str, Any] = {"type": kind or "user_assigned"}
    if user_assigned:
        identity["user_assigned_identities"] = [
            {"resource_id": rid} for rid in user_assigned.split(",") if rid
        ]
    return {"identity": identity}


@app.command()
def create(
    file: Path | None = FileOption,
    name: str | None = typer.Option(None, "--name", "-n", help="the compute's name"),
    type_: str | None = typer.Option(None, "--type", "-t", help="amlcompute (the default), ..."),
    size: str | None = typer.Option(None, "--size", help="a VM size; echoed"),
    min_instances: int | None = MinOption,
    max_instances: int | None = MaxOption,
    idle_time_before_scale_down: int | None = IdleOption,
    tier: str | None = typer.Option(None, "--tier", help="dedicated or low_priority; echoed"),
    description: str | None = typer.Option(None, "--description", "-d"),
    identity_type: str | None = IdentityTypeOption,
    user_assigned_identities: str | None = UserIdentitiesOption,
    set_: list[str] = SetOption,
    no_wait: bool = NoWaitOption,
    output: OutputFormat = OutputOption,
) -> None:
    """Create nothing: print the compute az would create (from the flags or the YAML)."""
    del no_wait  # nothing to wait for
    fields = read_yaml(optional_path(file), set_)
    name = name or fields.get("name")
    fields.pop("name", None)
    flags = _given(
        type=type_,
        size=size,
        min_instances=min_instances,
        max_instances=max_instances,
        idle_time_before_scale_down=idle_time_before_scale_down,
        tier=tier,
        description=description,
    )
    flags |= _identity(identity_type, user_assigned_identities)
    fields = {"type": "amlcompute", **fields, **flags}
    if str(fields["type"]).lower() == "amlcompute":
        fields = {**AMLCOMPUTE_DEFAULTS, **fields}
    if not name:
        raise CliError("give --name (or a --file whose YAML has name:)")
    err_console.print(f"compute create {name}: nothing created. {NOTHING_PROVISIONED}.")
    render(_view(str(name), fields), output)


@app.command()
def show(name: str = NameOption, output: OutputFormat = OutputOption) -> None:
    """Print the name as a compute that is ready: any name may be a deployment's compute."""
    err_console.print(f"compute show {name}: nothing is stored. {NOTHING_PROVISIONED}.")
    render(_view(name, {}), output)


@app.command()
def update(
    name: str = NameOption,
    min_instances: int | None = MinOption,
    max_instances: int | None = MaxOption,
    idle_time_before_scale_down: int | None = IdleOption,
    description: str | None = typer.Option(None, "--description", "-d"),
    identity_type: str | None = IdentityTypeOption,
    user_assigned_identities: str | None = UserIdentitiesOption,
    no_wait: bool = NoWaitOption,
    output: OutputFormat = OutputOption,
) -> None:
    """Change nothing: print the compute with the flags given."""
    del no_wait
    fields = _given(
        min_instances=min_instances,
        max_instances=max_instances,
        idle_time_before_scale_down=idle_time_before_scale_down,
        description=description,
    ) | _identity(identity_type, user_assigned_identities)
    err_console.print(f"compute update {name}: nothing changed. {NOTHING_PROVISIONED}.")
    render(_view(name, fields), output)


@app.command()
def delete(
    name: str = NameOption,
    yes: bool = typer.Option(False, "--yes", "-y", help="accepted for Azure compatibility"),
    no_wait: bool = NoWaitOption,
) -> None:
    """Delete nothing (deployments naming the compute keep running)."""
    del yes, no_wait
    err_console.print(f"compute delete {name}: nothing deleted. {NOTHING_PROVISIONED}.")
