"""`sluice online-deployment ...`: create, update, show, list, delete."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from sluice.common.resources import OnlineDeployment, ProvisioningState
from sluice.common.settings import Settings
from sluice.sdk import azure_views
from sluice.sdk.cli import local_cmds
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
    optional_path,
    registry,
    report_settled,
    service_running,
    wait_for_deployment,
    warn,
)
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import OutputFormat, OutputOption, err_console, render
from sluice.sdk.client import RegistryClient, get_collected, get_logs
from sluice.sdk.metrics import parse_duration
from sluice.sdk.specs import edit_online_deployment, load_online_deployment

app = typer.Typer(
    help="Online deployments: the model, code and compute behind an endpoint.", no_args_is_help=True
)

LocalOption = typer.Option(
    False, "--local", help="run on this machine with no control plane (the same inference server)"
)
InstanceIdOption = typer.Option(
    "",
    "--instance-id",
    help="this instance's log (ids: `show`; also one that has stopped), not the newest's",
)
COLUMNS = ["name", "endpoint", "state", "instances", "instance_type", "model", "version"]
NameOption = typer.Option(None, "--name", "-n", help="deployment name (overrides the YAML's)")
EndpointOption = typer.Option(None, "--endpoint-name", "-e", help="endpoint (overrides the YAML's)")
SkipScriptValidationOption = typer.Option(
    False,
    "--skip-script-validation",
    help="accepted for az compatibility and changes nothing: az checks the scoring script's "
    "Python syntax before it creates the deployment, Sluice does not (it only checks that the "
    "script file exists, with or without this flag); a broken script fails when the "
    "deployment starts",
)


def view(doc: OnlineDeployment) -> dict[str, Any]:
    model = doc.spec.model
    return {
        "name": doc.spec.name,
        "endpoint": doc.spec.endpoint_name,
        "state": doc.meta.provisioning_state.value,
        "instances": f"{sum(i.ready for i in doc.instances)}/{doc.spec.instance_count}",
        "instance_type": doc.spec.instance_type,
        "model": model.registered or (model.artifact.name if model.artifact else "-"),
        "version": doc.meta.version,
        "message": doc.meta.status_message,
    }


def show_one(doc: OnlineDeployment, output: OutputFormat) -> None:
    if output is OutputFormat.table:
        row = view(doc)
        render(row, output, columns=COLUMNS + (["message"] if row["message"] else []))
    else:
        render(azure_views.online_deployment(doc), output)


def _finish(
    client: RegistryClient, doc: OnlineDeployment, no_wait: bool, verb: str
) -> OnlineDeployment:
    spec = doc.spec
    what = f"deployment {spec.name} of {spec.endpoint_name}"
    if no_wait:
        err_console.print(f"{verb} {what}; it is {doc.meta.provisioning_state.value} (--no-wait).")
        return doc
    running = service_running(Settings(), "provisioner")
    if running is False:
        err_console.print(
            f"{verb} {what}. It is {doc.meta.provisioning_state.value}: it is stored, but no "
            "provisioner runs on this platform, so no instance will start."
        )
        return doc
    doc = wait_for_deployment(
        lambda: client.get_online_deployment(spec.endpoint_name, spec.name),
        what=what,
        pickup_timeout_s=None if running else PICKUP_TIMEOUT_S,
    )
    if doc.meta.provisioning_state is ProvisioningState.creating:
        err_console.print(
            f"{verb} {what}, but it is still Creating after {PICKUP_TIMEOUT_S:.0f}s: no "
            "provisioner has picked it up. Check the platform's provisioner."
        )
        return doc
    report_settled(doc, what, verb)
    return doc


@app.command()
def create(
    file: Path | None = FileOption,
    name: str | None = NameOption,
    endpoint_name: str | None = EndpointOption,
    set_: list[str] = SetOption,
    all_traffic: bool = typer.Option(False, "--all-traffic", help="send 100% of traffic to it"),
    skip_script_validation: bool = SkipScriptValidationOption,
    no_wait: bool = NoWaitOption,
    local: bool = LocalOption,
    output: OutputFormat = OutputOption,
) -> None:
    """Create a deployment from an Azure ML deployment YAML (model and code are uploaded)."""
    del skip_script_validation  # Sluice has no pre-create script check to skip (see its help)
    if local:
        local_cmds.create(optional_path(file), set_, name, endpoint_name, output)
        return
    if all_traffic and no_wait:  # as az ml: traffic moves only to a deployment that is up
        raise CliError(
            "--all-traffic moves traffic once the deployment has succeeded, so it cannot be "
            "used with --no-wait; drop one of them"
        )
    with registry() as client:
        loaded = load_deployment(load_online_deployment, client, file, set_, name, endpoint_name)
        warn(loaded.warnings + archived_references(client, loaded.spec))
        doc = client.create_online_deployment(loaded.spec)
        doc = _finish(client, doc, no_wait, "Created")
        endpoint, created = doc.spec.endpoint_name, doc.spec.name
        moved = all_traffic and doc.meta.provisioning_state is ProvisioningState.succeeded
        if moved:
            current = client.get_online_endpoint(endpoint).doc.spec.traffic
            client.set_traffic(endpoint, {name: 0 for name in current} | {created: 100})
            err_console.print(f"All traffic of {endpoint} now goes to {created}.")
    show_one(doc, output)
    if all_traffic and not moved:
        raise CliError(
            f"traffic of {endpoint} was not moved: {created} is "
            f"{doc.meta.provisioning_state.value}, not Succeeded; once it is: "
            f"sluice online-endpoint update -n {endpoint} --traffic '{created}=100 ...'"
        )


@app.command()
def update(
    file: Path | None = FileOption,
    name: str | None = NameOption,
    endpoint_name: str | None = EndpointOption,
    set_: list[str] = SetOption,
    add: list[str] = AddOption,
    remove: list[str] = RemoveOption,
    skip_script_validation: bool = SkipScriptValidationOption,
    no_wait: bool = NoWaitOption,
    local: bool = LocalOption,
    output: OutputFormat = OutputOption,
) -> None:
    """Update a deployment from its YAML, or by name with --set/--add/--remove.

    Instances roll without downtime. Without --file the stored deployment's fields
    are edited as az does (`--set instance_count=2`); the model, code and
    environment then stay as they are, or change only to a registered model or
    environment (`--set model=azureml:my-model:2`) or to another script of the
    stored code (`--set code_configuration.scoring_script=other.py`). With --local:
    the local deployment restarts from its YAML (--file).
    """
    del skip_script_validation  # as on create: nothing to skip
    if local:
        if file is None or add or remove:
            raise CliError(
                "update --local restarts the local deployment from its YAML: give --file "
                "(and --set; not --add/--remove)"
            )
        local_cmds.create(optional_path(file), set_, name, endpoint_name, output)
        return
    edits = generic_edits(set_, add, remove)
    if file is None and not (name and endpoint_name):
        raise CliError("give --file, or --name and --endpoint-name with --set/--add/--remove")
    with registry() as client:
        if file is None:
            assert name is not None and endpoint_name is not None
            current = client.get_online_deployment(endpoint_name, name).spec
            loaded = edit_online_deployment(current, edits)
        else:
            loaded = load_deployment(
                load_online_deployment, client, file, edits, name, endpoint_name
            )
        warn(loaded.warnings + archived_references(client, loaded.spec))
        doc = client.update_online_deployment(loaded.spec)
        doc = _finish(client, doc, no_wait, "Updated")
    show_one(doc, output)


@app.command()
def show(
    name: str = typer.Option(..., "--name", "-n"),
    endpoint_name: str = typer.Option(..., "--endpoint-name", "-e"),
    local: bool = LocalOption,
    output: OutputFormat = OutputOption,
) -> None:
    """Show one deployment: state, instances, model."""
    if local:
        local_cmds.show_deployment(endpoint_name, name, output)
        return
    with registry() as client:
        show_one(client.get_online_deployment(endpoint_name, name), output)


@app.command("list")
def list_(
    endpoint_name: str | None = typer.Option(None, "--endpoint-name", "-e"),
    local: bool = LocalOption,
    output: OutputFormat = OutputOption,
) -> None:
    """List the deployments of an endpoint (or every local deployment with --local)."""
    if local:
        local_cmds.list_(output)
        return
    if not endpoint_name:
        raise CliError("give --endpoint-name (or --local)")
    with registry() as client:
        docs = client.list_online_deployments(endpoint_name)
    if output is OutputFormat.table:
        render(
            [view(d) for d in docs],
            output,
            columns=COLUMNS,
            title=f"Deployments of {endpoint_name}",
        )
    else:
        render([azure_views.online_deployment_summary(d) for d in docs], output)


@app.command()
def delete(
    name: str = typer.Option(..., "--name", "-n"),
    endpoint_name: str = typer.Option(..., "--endpoint-name", "-e"),
    yes: bool = typer.Option(False, "--yes", "-y", help="accepted for Azure compatibility"),
    no_wait: bool = NoWaitOption,
    local: bool = LocalOption,
) -> None:
    """Delete a deployment that no longer takes live or mirrored traffic."""
    del yes, no_wait
    if local:
        local_cmds.delete(endpoint_name, name)
        return
    with registry() as client:
        client.delete_online_deployment(endpoint_name, name)
    err_console.print(f"Deleted deployment {name} of {endpoint_name}.")


@app.command("get-logs")
def get_logs_(
    name: str = typer.Option(..., "--name", "-n"),
    endpoint_name: str = typer.Option(..., "--endpoint-name", "-e"),
    lines: int = typer.Option(0, "--lines", "-l", help="last N lines (default 200)"),
    container: str = typer.Option(
        "inference-server", "--container", "-c", help="inference-server or storage-initializer"
    ),
    instance_id: str = InstanceIdOption,
    local: bool = LocalOption,
) -> None:
    """Print the log of the deployment's newest instance (or of its environment build)."""
    if local:
        sys.stdout.write(local_cmds.logs(endpoint_name, name, lines or None) + "\n")
        return
    logs = get_logs(endpoint_name, name, lines=lines, container=container, instance_id=instance_id)
    if logs.instance_id:
        err_console.print(f"instance {logs.instance_id} ({logs.path})")
    sys.stdout.write(logs.text + "\n")


def _evicted(reply: Any) -> str:
    """What the quota deleted, for `collected`'s summary line ("" when nothing)."""
    evicted = dict(reply.evicted)
    if not evicted.get("files"):
        return ""
    size = float(evicted.get("bytes", 0))
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    amount = f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
    partitions, files = evicted.get("partitions", 0), evicted["files"]
    return (
        f", the quota evicted the oldest {partitions} partition{'s' * (partitions != 1)}"
        f" ({files} file{'s' * (files != 1)}, {amount}): records before"
        f" {reply.evicted_before} are gone"
    )


@app.command()
def collected(
    name: str = typer.Option(..., "--name", "-n"),
    endpoint_name: str = typer.Option(..., "--endpoint-name", "-e"),
    since: str = typer.Option("", "--since", help="only the last 90s, 15m, 1h, 1d (default: all)"),
    collection: str = typer.Option(
        "", "--collection", "-c", help="model_inputs, model_outputs, request or response"
    ),
    limit: int = typer.Option(20, "--limit", help="newest records shown"),
    output: OutputFormat = OutputOption,
) -> None:
    """What the deployment's data_collector wrote: its files, newest records, drops, and
    what its quota deleted to make room (the oldest partitions)."""
    if limit < 0:
        raise CliError("--limit cannot be negative")
    since_s = parse_duration(since, "--since") if since else 0
    reply = get_collected(endpoint_name, name, collection=collection, since_s=since_s, limit=limit)
    records = [json.loads(r) for r in reply.records]
    if output is OutputFormat.table:
        err_console.print(
            f"{reply.folder}: {len(reply.files)} files, {reply.total_records} records"
            + _evicted(reply)
            + (f", dropped {dict(reply.dropped)}" if reply.dropped else "")
        )
        rows = [
            {
                "time": r.get("time"),
                "collection": str(r.get("type", "")).removeprefix("azureml.inference."),
                "correlationid": r.get("correlationid"),
                "data": json.dumps(r.get("data"))[:60],
            }
            for r in records
        ]
        render(rows, output, columns=["time", "collection", "correlationid", "data"])
        return
    render(
        {
            "folder": reply.folder,
            "files": [
                {"path": f.path, "collection": f.collection, "size_bytes": f.size_bytes}
                for f in reply.files
            ],
            "total_records": reply.total_records,
            "dropped": dict(reply.dropped),
            "evicted": dict(reply.evicted),
            "evicted_before": reply.evicted_before,
            "records": records,
        },
        output,
    )
