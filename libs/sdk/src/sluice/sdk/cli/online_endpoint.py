"""`sluice online-endpoint ...`: create, update, show, list, delete, credentials."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
import yaml

from sluice.common.platform import LocalPlatform
from sluice.common.settings import Settings
from sluice.sdk import azure_views
from sluice.sdk.applied import NotApplied
from sluice.sdk.cli import local_cmds, metrics_cmds, request_logs
from sluice.sdk.cli.common import (
    AddOption,
    FileOption,
    NoWaitOption,
    RemoveOption,
    SetOption,
    applied_watcher,
    generic_edits,
    optional_path,
    parse_shares,
    registry,
    shares_text,
    warn,
)
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import OutputFormat, OutputOption, err_console, render
from sluice.sdk.client import OnlineEndpoint
from sluice.sdk.invoke import DEPLOYMENT_HEADER, invoke_at
from sluice.sdk.invoke import invoke as gateway_invoke
from sluice.sdk.specs import load_online_endpoint

app = typer.Typer(
    help="Online endpoints: stable, authenticated scoring URLs.", no_args_is_help=True
)

COLUMNS = ["name", "auth_mode", "traffic", "mirror_traffic", "state", "scoring_uri"]
NameOption = typer.Option(None, "--name", "-n", help="endpoint name (overrides the YAML's)")
TrafficOption = typer.Option(
    [], "--traffic", "-r", help="merge shares into the split, e.g. --traffic 'blue=90 green=10'"
)
MirrorOption = typer.Option(
    [], "--mirror-traffic", help="merge mirror shares, e.g. --mirror-traffic green=10"
)


def view(endpoint: OnlineEndpoint) -> dict[str, Any]:
    doc = endpoint.doc
    return {
        "name": doc.spec.name,
        "auth_mode": doc.spec.auth_mode.value,
        "kind": doc.spec.kind.value,
        "traffic": shares_text(doc.spec.traffic),
        "mirror_traffic": shares_text(doc.spec.mirror_traffic),
        "state": doc.meta.provisioning_state.value,
        "version": doc.meta.version,
        "scoring_uri": endpoint.scoring_uri,
    }


def show_one(endpoint: OnlineEndpoint, output: OutputFormat) -> None:
    if output is OutputFormat.table:
        render(view(endpoint), output, columns=COLUMNS)
        return
    render(azure_views.online_endpoint(endpoint), output)


LocalOption = typer.Option(False, "--local", help="the local endpoint (no control plane)")
ListLocalOption = typer.Option(
    False, "--local", help="the local endpoints (those `online-deployment create --local` runs)"
)
AuthModeOption = typer.Option(
    None,
    "--auth-mode",
    help="key, aml_token or aad_token (served as aml_token): the same as --set auth_mode=MODE, "
    "and it wins over a --set of it, as in az",
)
RequestFileOption = typer.Option(..., "--request-file", "-r", help="the request body")


@app.command()
def create(
    file: Path | None = FileOption,
    name: str | None = NameOption,
    set_: list[str] = SetOption,
    auth_mode: str | None = AuthModeOption,
    local: bool = LocalOption,
    output: OutputFormat = OutputOption,
) -> None:
    """Create an endpoint from an Azure ML endpoint YAML."""
    if auth_mode is not None:  # az appends it after --set's overrides: it wins
        set_ = [*set_, f"auth_mode={auth_mode}"]
    if local:
        spec = load_online_endpoint(optional_path(file), set_, name=name).spec
        err_console.print(
            f"Local endpoint {spec.name} needs nothing running: start a deployment with "
            f"`sluice online-deployment create --local -f <deployment.yml>`."
        )
        return
    loaded = load_online_endpoint(optional_path(file), set_, name=name)
    warn(loaded.warnings)
    with registry() as client:
        endpoint = client.create_online_endpoint(loaded.spec)
    err_console.print(f"Created online endpoint {endpoint.doc.spec.name}.")
    show_one(endpoint, output)


@app.command()
def update(
    file: Path | None = FileOption,
    name: str | None = NameOption,
    set_: list[str] = SetOption,
    add: list[str] = AddOption,
    remove: list[str] = RemoveOption,
    traffic: list[str] = TrafficOption,
    mirror_traffic: list[str] = MirrorOption,
    no_wait: bool = NoWaitOption,
    output: OutputFormat = OutputOption,
) -> None:
    """Update description, tags or auth mode, and merge traffic shares.

    Traffic is only changed by what you name (`--traffic green=10 blue=90`,
    `--set traffic.green=10`, or a `traffic:` map in the YAML); deployments you
    do not name keep their share, and the result must sum to 100. Other fields
    take az's generic update arguments (`--set`, `--add tags team=ml`,
    `--remove tags.team`).
    """
    if file is None and not name:
        raise CliError("give --file or --name")
    traffic_sets = [s for s in set_ if s.startswith(("traffic.", "mirror_traffic."))]
    field_sets = [s for s in set_ if s not in traffic_sets]
    with registry() as client:
        base = None
        if file is None:
            assert name is not None
            current = client.get_online_endpoint(name).doc.spec
            base = {
                "name": current.name,
                "description": current.description,
                "tags": current.tags,
                "auth_mode": current.auth_mode.value,
                **({"compute": current.compute} if current.compute else {}),
            }
        edits = generic_edits(field_sets, add, remove)
        loaded = load_online_endpoint(optional_path(file), edits, name=name, base=base)
        warn(loaded.warnings)
        spec = loaded.spec
        shares = dict(spec.traffic) if "traffic" in loaded.named else None
        mirror = dict(spec.mirror_traffic) if "mirror_traffic" in loaded.named else None
        for item in traffic_sets:
            key, _, value = item.partition("=")
            field, _, deployment = key.partition(".")
            change = parse_shares([f"{deployment}={value}"], "--set")
            if field == "traffic":
                shares = {**(shares or {}), **change}
            else:
                mirror = {**(mirror or {}), **change}
        if traffic:
            shares = {**(shares or {}), **parse_shares(traffic, "--traffic")}
        if mirror_traffic:
            mirror = {**(mirror or {}), **parse_shares(mirror_traffic, "--mirror-traffic")}
        spec = spec.model_copy(update={"traffic": shares or {}, "mirror_traffic": mirror or {}})
        traffic_changes = shares is not None or mirror is not None
        with applied_watcher(enabled=traffic_changes and not no_wait) as watcher:
            endpoint = client.update_online_endpoint(
                spec, with_traffic=shares is not None, with_mirror_traffic=mirror is not None
            )
            if watcher is not None:
                with err_console.status("Waiting until the gateway serves the new split…"):
                    try:
                        watcher.wait(endpoint.doc.spec.name, endpoint.doc.meta.version)
                    except NotApplied as exc:
                        raise CliError(str(exc)) from None
                err_console.print("The gateway serves the new traffic split.")
    err_console.print(f"Updated online endpoint {endpoint.doc.spec.name}.")
    show_one(endpoint, output)


@app.command()
def show(
    name: str = typer.Option(..., "--name", "-n"),
    local: bool = LocalOption,
    output: OutputFormat = OutputOption,
) -> None:
    """Show one endpoint: its traffic split, state and scoring URI."""
    if local:
        local_cmds.show_endpoint(name, output)
        return
    with registry() as client:
        show_one(client.get_online_endpoint(name), output)


@app.command("list")
def list_(local: bool = ListLocalOption, output: OutputFormat = OutputOption) -> None:
    """List every online endpoint (with --local, the endpoints run on this machine)."""
    if local:
        local_cmds.list_endpoints(output)
        return
    with registry() as client:
        endpoints = client.list_online_endpoints()
    if output is OutputFormat.table:
        render([view(e) for e in endpoints], output, columns=COLUMNS, title="Online endpoints")
    else:
        render([azure_views.online_endpoint_summary(e) for e in endpoints], output)


@app.command()
def delete(
    name: str = typer.Option(..., "--name", "-n"),
    yes: bool = typer.Option(False, "--yes", "-y", help="accepted for Azure compatibility"),
    no_wait: bool = NoWaitOption,
    local: bool = LocalOption,
) -> None:
    """Delete an endpoint and all of its deployments; the name is free again at once."""
    del yes, no_wait
    if local:
        local_cmds.delete(name, None)
        return
    with registry() as client:
        client.delete_online_endpoint(name)
    err_console.print(f"Deleted online endpoint {name} and its deployments.")


@app.command("get-credentials")
def get_credentials(
    name: str = typer.Option(..., "--name", "-n"), output: OutputFormat = OutputOption
) -> None:
    """Print the endpoint's keys (key auth) or a fresh token and its expiry (aml_token)."""
    with registry() as client:
        creds = client.get_credentials(name)
    render(azure_views.credentials(creds), output)


@app.command("regenerate-keys")
def regenerate_keys(
    name: str = typer.Option(..., "--name", "-n"),
    key_type: str = typer.Option("primary", "--key-type", help="primary or secondary"),
) -> None:
    """Replace one key; clients using the other keep working."""
    with registry() as client:
        client.regenerate_key(name, key_type)
    err_console.print(f"Regenerated the {key_type} key of {name}.")


AnswerOutputOption = typer.Option(
    OutputFormat.tsv,
    "--output",
    "-o",
    envvar="SLUICE_OUTPUT",
    help="tsv (default): the answer as it came; json/yaml: as az prints it, one string",
)


def _request_body(path: Path) -> bytes:
    """The file's bytes, read as a stream: scripts also pass a pipe (`--request-file
    <(jq ...)` is /dev/fd/63), which is no regular file."""
    if not path.exists():
        raise CliError(f"{path}: no such file")
    if path.is_dir():
        raise CliError(f"{path} is a folder; --request-file takes the request body's file")
    try:
        with path.open("rb") as stream:
            return stream.read()
    except OSError as exc:
        raise CliError(f"{path}: cannot be read ({exc.strerror or exc})") from None


@app.command()
def invoke(
    name: str = typer.Option(..., "--name", "-n"),
    request_file: Path = RequestFileOption,
    deployment_name: str | None = typer.Option(
        None, "--deployment-name", "-d", help="pin this deployment (works at 0% traffic)"
    ),
    local: bool = LocalOption,
    output: OutputFormat = AnswerOutputOption,
) -> None:
    """Score the endpoint: POST the file to /score, through the gateway with its credentials.

    az prints the answer as a JSON string (its default `-o json`, which the az forwarder
    keeps): scripts that unwrap it (`jq -r fromjson`) get the same here."""
    body = _request_body(request_file)
    if local:
        status, reply = local_cmds.invoke(name, deployment_name, body)
        served = deployment_name or ""
    else:
        settings = Settings()
        state = None if settings.registry_address else LocalPlatform(settings).load_state()
        with registry() as client:
            if state is None:  # a remote platform: its registry says where to score
                status, headers, reply = invoke_at(name, body, deployment_name, client=client)
            else:
                status, headers, reply = gateway_invoke(
                    name, body, deployment_name, client=client, platform_state=state
                )
        served = dict((k.lower(), v) for k, v in headers).get(DEPLOYMENT_HEADER, "")
    if served:
        err_console.print(f"served by {served}")
    if not 200 <= status < 300:
        raise CliError(f"HTTP {status}: {reply.decode(errors='replace').strip()[:500]}")
    text = reply.decode(errors="replace")
    if output in (OutputFormat.json, OutputFormat.jsonc):
        text = json.dumps(text)
    elif output in (OutputFormat.yaml, OutputFormat.yamlc):
        text = yaml.safe_dump(text, default_style='"').rstrip("\n")
    if output is not OutputFormat.none:
        sys.stdout.write(text + "\n")


app.command("metrics")(metrics_cmds.metrics)
app.command("show-costs")(metrics_cmds.show_costs)
app.command("logs")(request_logs.logs)
