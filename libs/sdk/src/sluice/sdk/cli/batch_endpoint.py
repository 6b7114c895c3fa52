"""`sluice batch-endpoint ...`: create, update, show, list, delete, invoke, list-jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sluice.sdk import azure_views
from sluice.sdk.cli import job as jobs
from sluice.sdk.cli.common import (
    AddOption,
    FileOption,
    RemoveOption,
    SetOption,
    generic_edits,
    optional_path,
    registry,
    warn,
)
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import OutputFormat, OutputOption, err_console, render
from sluice.sdk.client import BatchEndpoint
from sluice.sdk.specs import load_batch_endpoint

app = typer.Typer(
    help="Batch endpoints: asynchronous scoring jobs over data sets.", no_args_is_help=True
)

COLUMNS = ["name", "auth_mode", "default_deployment", "state", "scoring_uri"]
NameOption = typer.Option(None, "--name", "-n", help="endpoint name (overrides the YAML's)")
JobSetOption = typer.Option(
    [], "--set", help="job settings, e.g. --set mini_batch_size=5 error_threshold=2"
)


def view(endpoint: BatchEndpoint) -> dict[str, Any]:
    doc = endpoint.doc
    return {
        "name": doc.spec.name,
        "auth_mode": doc.spec.auth_mode.value,
        "default_deployment": doc.spec.default_deployment or "-",
        "state": doc.meta.provisioning_state.value,
        "version": doc.meta.version,
        "scoring_uri": endpoint.scoring_uri,
    }


def show_one(endpoint: BatchEndpoint, output: OutputFormat) -> None:
    if output is OutputFormat.table:
        render(view(endpoint), output, columns=COLUMNS)
    else:
        render(azure_views.batch_endpoint(endpoint), output)


@app.command()
def create(
    file: Path | None = FileOption,
    name: str | None = NameOption,
    set_: list[str] = SetOption,
    output: OutputFormat = OutputOption,
) -> None:
    """Create a batch endpoint from an Azure ML batch endpoint YAML."""
    loaded = load_batch_endpoint(optional_path(file), set_, name=name)
    warn(loaded.warnings)
    with registry() as client:
        endpoint = client.create_batch_endpoint(loaded.spec)
    err_console.print(f"Created batch endpoint {endpoint.doc.spec.name}.")
    show_one(endpoint, output)


@app.command()
def update(
    file: Path | None = FileOption,
    name: str | None = NameOption,
    set_: list[str] = SetOption,
    add: list[str] = AddOption,
    remove: list[str] = RemoveOption,
    output: OutputFormat = OutputOption,
) -> None:
    """Update description, tags or the default deployment (`--set defaults.deployment_name=d`)."""
    if file is None and not name:
        raise CliError("give --file or --name")
    with registry() as client:
        base = None
        if file is None:
            assert name is not None
            current = client.get_batch_endpoint(name).doc.spec
            base = {
                "name": current.name,
                "description": current.description,
                "tags": current.tags,
                "auth_mode": current.auth_mode.value,
                "defaults": {"deployment_name": current.default_deployment or None},
            }
        edits = generic_edits(set_, add, remove)
        loaded = load_batch_endpoint(optional_path(file), edits, name=name, base=base)
        warn(loaded.warnings)
        endpoint = client.update_batch_endpoint(loaded.spec)
    err_console.print(f"Updated batch endpoint {endpoint.doc.spec.name}.")
    show_one(endpoint, output)


@app.command()
def show(
    name: str = typer.Option(..., "--name", "-n"), output: OutputFormat = OutputOption
) -> None:
    """Show one batch endpoint."""
    with registry() as client:
        show_one(client.get_batch_endpoint(name), output)


@app.command("list")
def list_(output: OutputFormat = OutputOption) -> None:
    """List every batch endpoint."""
    with registry() as client:
        endpoints = client.list_batch_endpoints()
    if output is OutputFormat.table:
        render([view(e) for e in endpoints], output, columns=COLUMNS, title="Batch endpoints")
    else:
        render([azure_views.batch_endpoint(e) for e in endpoints], output)


@app.command()
def delete(
    name: str = typer.Option(..., "--name", "-n"),
    yes: bool = typer.Option(False, "--yes", "-y", help="accepted for Azure compatibility"),
) -> None:
    """Delete a batch endpoint and its deployments."""
    del yes
    with registry() as client:
        client.delete_batch_endpoint(name)
    err_console.print(f"Deleted batch endpoint {name} and its deployments.")


InvocationFileOption = typer.Option(
    None, "--file", "-f", help="an invocation YAML with az's inputs: (and outputs:)"
)


@app.command()
def invoke(
    name: str = typer.Option(..., "--name", "-n", help="the batch endpoint"),
    input_: str = typer.Option(
        "", "--input", "-i", help="a local folder or file, a file:// or http(s):// URI"
    ),
    file: Path | None = InvocationFileOption,
    inputs: str = typer.Option("", "--inputs", help='az\'s JSON: {"name": {"type", "path"}}'),
    outputs: str = typer.Option("", "--outputs", help='az\'s JSON: {"score": {"type", "path"}}'),
    experiment_name: str = typer.Option(
        "", "--experiment-name", help="accepted for az; a job's experiment is its endpoint"
    ),
    deployment_name: str = typer.Option(
        "", "--deployment-name", "-d", help="default: the endpoint's default deployment"
    ),
    input_type: str = typer.Option("", "--input-type", help="uri_folder (default) or uri_file"),
    output_path: str = typer.Option(
        "", "--output-path", help="a folder, or azureml://datastores/<ds>/paths/<p>"
    ),
    set_: list[str] = JobSetOption,
    mini_batch_size: int | None = typer.Option(None, "--mini-batch-size", "-m"),
    instance_count: int | None = typer.Option(None, "--instance-count", "-c"),
    job_name: str = typer.Option("", "--job-name", help="default: a generated batchjob-<id>"),
    stream: bool = typer.Option(False, "--stream", help="follow the job to its end"),
    output: OutputFormat = OutputOption,
) -> None:
    """Start a batch job over a folder, a file or a URI; prints the job at once."""
    if experiment_name:
        warn([f"--experiment-name {experiment_name!r} is ignored: a job's experiment is its "
              "endpoint"])  # fmt: skip
    given = jobs.job_invocation(input_, input_type, output_path, file, inputs, outputs)
    jobs.invoke(
        name,
        given.input,
        deployment_name,
        given.input_type,
        given.output_path,
        [
            *set_,
            *([f"output_file_name={given.output_file_name}"] if given.output_file_name else []),
        ],
        mini_batch_size,
        instance_count,
        job_name,
        stream,
        output,
    )


@app.command("list-jobs")
def list_jobs(
    name: str = typer.Option(..., "--name", "-n"),
    deployment_name: str = typer.Option("", "--deployment-name", "-d", help="only its jobs"),
    output: OutputFormat = OutputOption,
) -> None:
    """List the endpoint's jobs, newest first."""
    with jobs.batch_client() as client:
        listed = client.list(endpoint=name, deployment=deployment_name)
        jobs.show_jobs(listed, output, f"Jobs of {name}")
