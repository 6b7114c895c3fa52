"""`sluice batch-deployment ...`: create, update, show, list, delete, list-jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sluice.common.resources import ENVIRONMENT_BUILDING, BatchDeploymentDoc, ProvisioningState
from sluice.common.settings import Settings
from sluice.sdk import azure_views
from sluice.sdk.cli import job as jobs
from sluice.sdk.cli.common import (
    PICKUP_TIMEOUT_S,
    AddOption,
    FileOption,
    NoWaitOption,
    RemoveOption,
    SetOption,
    archived_references,
    generic_edits,
    load_deployment,
    registry,
    report_settled,
    service_running,
    wait_for_deployment,
    warn,
)
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import OutputFormat, OutputOption, err_console, render
from sluice.sdk.client import RegistryClient, SluiceError
from sluice.sdk.specs import edit_batch_deployment, load_batch_deployment

app = typer.Typer(
    help="Batch deployments: the model and code a batch job runs.", no_args_is_help=True
)

COLUMNS = [
    "name",
    "endpoint",
    "state",
    "instances",
    "mini_batch_size",
    "output_action",
    "error_threshold",
]
NameOption = typer.Option(None, "--name", "-n", help="deployment name (overrides the YAML's)")
WAITING = frozenset({ProvisioningState.creating, ProvisioningState.updating})
EndpointOption = typer.Option(None, "--endpoint-name", "-e", help="endpoint (overrides the YAML's)")


def view(doc: BatchDeploymentDoc) -> dict[str, Any]:
    s = doc.spec.settings
    return {
        "name": doc.spec.name,
        "endpoint": doc.spec.endpoint_name,
        "state": doc.meta.provisioning_state.value,
        "instances": doc.spec.instance_count,
        "mini_batch_size": s.mini_batch_size,
        "output_action": s.output_action.value,
        "error_threshold": s.error_threshold,
        "version": doc.meta.version,
        # Its first line: a failed build's message ends with the installer's lines (json
        # and yaml have them all).
        "message": doc.meta.status_message.partition("\n")[0],
    }


def unclaimed(doc: BatchDeploymentDoc) -> bool:
    """Waiting, and no batch service has said it builds its environment."""
    meta = doc.meta
    return meta.provisioning_state in WAITING and meta.status_message != ENVIRONMENT_BUILDING


def _finish(
    client: RegistryClient, doc: BatchDeploymentDoc, no_wait: bool, verb: str
) -> BatchDeploymentDoc:
    """Wait, as az does, until the batch service has built the deployment's environment:
    Succeeded (with its warnings), or Failed with the build's message (exit code 1)."""
    spec = doc.spec
    what = f"batch deployment {spec.name} of {spec.endpoint_name}"
    state = doc.meta.provisioning_state.value
    if no_wait:
        err_console.print(f"{verb} {what}; it is {state} (--no-wait).")
        return doc
    running = service_running(Settings(), "batch")
    if running is False:
        err_console.print(
            f"{verb} {what}. It is {state}: it is stored, but no batch service runs on this "
            "platform to build its environment."
        )
        return doc
    doc = wait_for_deployment(
        lambda: client.get_batch_deployment(spec.endpoint_name, spec.name),
        what=what,
        pickup_timeout_s=None if running else PICKUP_TIMEOUT_S,
        unclaimed=unclaimed,
        logs_hint="the batch service's log",
    )
    state = doc.meta.provisioning_state.value
    if doc.meta.provisioning_state in WAITING:
        err_console.print(
            f"{verb} {what}, but it is still {state} after {PICKUP_TIMEOUT_S:.0f}s: no batch "
            "service has picked it up. Check the platform's batch service."
        )
        return doc
    report_settled(doc, what, verb)
    return doc


def show_one(doc: BatchDeploymentDoc, output: OutputFormat) -> None:
    if output is OutputFormat.table:
        row = view(doc)
        # Why it is not Succeeded (a Succeeded one's warnings were printed at create).
        why = row["message"] and doc.meta.provisioning_state is not ProvisioningState.succeeded
        render(row, output, columns=COLUMNS + (["message"] if why else []))
    else:
        render(azure_views.batch_deployment(doc), output)


@app.command()
def create(
    file: Path | None = FileOption,
    name: str | None = NameOption,
    endpoint_name: str | None = EndpointOption,
    set_: list[str] = SetOption,
    set_default: bool = typer.Option(False, "--set-default", help="make it the endpoint's default"),
    no_wait: bool = NoWaitOption,
    output: OutputFormat = OutputOption,
) -> None:
    """Create a batch deployment from an Azure ML batch deployment YAML; wait until its
    environment is built (--no-wait: return at once)."""
    with registry() as client:
        loaded = load_deployment(load_batch_deployment, client, file, set_, name, endpoint_name)
        warn(loaded.warnings + archived_references(client, loaded.spec))
        verb = "Created"
        try:
            doc = client.create_batch_deployment(loaded.spec, set_default=set_default)
        except SluiceError as exc:
            # As az's `batch-deployment create` (create or update, unlike online's): the
            # same name again replaces it (a name differing only by case is still refused).
            if exc.code != "ALREADY_EXISTS" or "already exists" not in str(exc):
                raise
            doc = client.update_batch_deployment(loaded.spec)
            verb = "Updated"
            if set_default:
                endpoint = client.get_batch_endpoint(doc.spec.endpoint_name).doc.spec
                client.update_batch_endpoint(
                    endpoint.model_copy(update={"default_deployment": doc.spec.name})
                )
        doc = _finish(client, doc, no_wait, verb)
    show_one(doc, output)


@app.command()
def update(
    file: Path | None = FileOption,
    name: str | None = NameOption,
    endpoint_name: str | None = EndpointOption,
    set_: list[str] = SetOption,
    add: list[str] = AddOption,
    remove: list[str] = RemoveOption,
    no_wait: bool = NoWaitOption,
    output: OutputFormat = OutputOption,
) -> None:
    """Update a batch deployment from its YAML, or by name with --set/--add/--remove; wait
    until its environment is built (--no-wait: return at once)."""
    edits = generic_edits(set_, add, remove)
    if file is None and not (name and endpoint_name):
        raise CliError("give --file, or --name and --endpoint-name with --set/--add/--remove")
    with registry() as client:
        if file is None:
            assert name is not None and endpoint_name is not None
            current = client.get_batch_deployment(endpoint_name, name).spec
            loaded = edit_batch_deployment(current, edits)
        else:
            loaded = load_deployment(
                load_batch_deployment, client, file, edits, name, endpoint_name
            )
        warn(loaded.warnings + archived_references(client, loaded.spec))
        doc = _finish(client, client.update_batch_deployment(loaded.spec), no_wait, "Updated")
    show_one(doc, output)


@app.command()
def show(
    name: str = typer.Option(..., "--name", "-n"),
    endpoint_name: str = typer.Option(..., "--endpoint-name", "-e"),
    output: OutputFormat = OutputOption,
) -> None:
    """Show one batch deployment."""
    with registry() as client:
        show_one(client.get_batch_deployment(endpoint_name, name), output)


@app.command("list")
def list_(
    endpoint_name: str = typer.Option(..., "--endpoint-name", "-e"),
    output: OutputFormat = OutputOption,
) -> None:
    """List the deployments of a batch endpoint."""
    with registry() as client:
        docs = client.list_batch_deployments(endpoint_name)
    if output is OutputFormat.table:
        render(
            [view(d) for d in docs],
            output,
            columns=COLUMNS,
            title=f"Deployments of {endpoint_name}",
        )
    else:
        render([azure_views.batch_deployment(d) for d in docs], output)


@app.command()
def delete(
    name: str = typer.Option(..., "--name", "-n"),
    endpoint_name: str = typer.Option(..., "--endpoint-name", "-e"),
    yes: bool = typer.Option(False, "--yes", "-y", help="accepted for Azure compatibility"),
) -> None:
    """Delete a batch deployment (make another one the default first)."""
    del yes
    with registry() as client:
        client.delete_batch_deployment(endpoint_name, name)
    err_console.print(f"Deleted batch deployment {name} of {endpoint_name}.")


@app.command("list-jobs")
def list_jobs(
    name: str = typer.Option(..., "--name", "-n"),
    endpoint_name: str = typer.Option(..., "--endpoint-name", "-e"),
    output: OutputFormat = OutputOption,
) -> None:
    """List the jobs this deployment ran, newest first."""
    with jobs.batch_client() as client:
        found = client.list(endpoint=endpoint_name, deployment=name)
    jobs.show_jobs(found, output, f"Jobs of {endpoint_name}/{name}")
