"""`sluice job ...` and the batch-job verbs of the endpoint commands, as `az ml` has them.

`batch-endpoint invoke` prints the job at once (with `--stream`, follows it
with a progress bar to the end); `job show|list|stream|cancel|download`
manage it afterwards. `job download` copies the `score` output to
`<download-path>/named-outputs/score/`, the layout Azure's samples read.
"""

from __future__ import annotations

import json
import time
import webbrowser
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sluice.common.platform import LocalPlatform
from sluice.common.settings import Settings
from sluice.sdk.batch import (
    TERMINAL,
    BatchClient,
    Invocation,
    invocation,
    job_view,
    parse_overrides,
    state_name,
    upload_input,
)
from sluice.sdk.cli.common import registry, save_download
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import OutputFormat, OutputOption, console, err_console, render
from sluice.sdk.specs import read_yaml
from sluice.v1 import common_pb2

app = typer.Typer(help="Batch jobs: show, list, follow, cancel, download.", no_args_is_help=True)

COLUMNS = ["name", "status", "endpoint_name", "deployment_name", "progress", "cost"]
JobNameOption = typer.Option(..., "--name", "-n", help="the job's name")
WebOption = typer.Option(False, "--web", help="open the job's page in the portal")


@contextmanager
def batch_client() -> Iterator[BatchClient]:
    with BatchClient.connect() as client:
        yield client


def _row(job: Any) -> dict[str, Any]:
    view = job_view(job)
    p = view["progress"]
    view["progress"] = (
        f"{p['mini_batches_done'] + p['mini_batches_failed']}/{p['mini_batches_total']} "
        f"mini-batches, {p['files_failed']} files failed"
    )
    view["cost"] = f"{view['cost']['cost']:.6f} USD"
    return view


def show_job(job: Any, output: OutputFormat) -> None:
    if output is OutputFormat.table:
        render(_row(job), output, columns=[*COLUMNS, "output_path", "status_message"])
    else:
        render(job_view(job), output)


def show_jobs(jobs: list[Any], output: OutputFormat, title: str) -> None:
    if output is OutputFormat.table:
        render([_row(j) for j in jobs], output, columns=COLUMNS, title=title)
    else:
        render([job_view(j) for j in jobs], output)


def follow_progress(client: BatchClient, name: str) -> Any:
    """A progress bar over mini-batches until the job ends; returns the final job."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("mini-batches, {task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        job = client.get(name)
        task = bar.add_task(
            state_name(job), total=job.progress.mini_batches_total or None, failed=0
        )
        while True:
            p = job.progress
            bar.update(
                task,
                description=f"{name} {state_name(job)}",
                completed=p.mini_batches_done + p.mini_batches_failed,
                total=p.mini_batches_total or None,
                failed=p.mini_batches_failed,
            )
            if state_name(job) in TERMINAL:
                return job
            time.sleep(0.5)
            job = client.get(name)


def job_invocation(
    input_: str,
    input_type: str,
    output_path: str,
    file: Path | None,
    inputs: str,
    outputs: str,
) -> Invocation:
    """The job's input and output from `--input` etc., or from az's `--file` (an invocation
    YAML with `inputs:`/`outputs:`) or `--inputs`/`--outputs` (JSON): one of the three."""
    given = [what for what, value in (("--input", input_), ("--file", file), ("--inputs", inputs))
             if value]  # fmt: skip
    if len(given) != 1:
        raise CliError(
            "give the job's input with one of --input, --file (az's invocation YAML) or "
            f"--inputs (JSON){'' if not given else ', not ' + ' and '.join(given)}"
        )
    if input_:
        if outputs:
            raise CliError("--outputs goes with --inputs or --file; with --input use --output-path")
        return Invocation(input_, input_type, output_path)
    if file is not None:
        where = str(file)
        doc = read_yaml(file)  # a mapping, or SpecError naming the file, line and column
        if "inputs" not in doc:
            raise CliError(f"--file {file}: needs inputs: (az's invocation YAML)")
        found, found_outputs, base = doc["inputs"], doc.get("outputs"), file.parent
    else:
        where, base = "--inputs", None
        found, found_outputs = _json_option("--inputs", inputs), None
    if outputs:
        found_outputs = _json_option("--outputs", outputs)
    if input_type or output_path:  # the file or JSON said them; options would contradict
        raise CliError("--input-type and --output-path go with --input, not --file/--inputs")
    return invocation(found, found_outputs, where, base)


def _json_option(option: str, value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise CliError(f"{option}: not JSON: {exc}") from None


def local_input(value: str) -> tuple[str, common_pb2.ArtifactRef | None]:
    """A local file or folder is uploaded (as Azure's CLI uploads it to the datastore): the
    service reads only its own folders. URIs and data assets pass through."""
    if "://" in value or value.startswith("azureml:"):
        return value, None
    path = Path(value).expanduser()
    if not path.exists():
        raise CliError(f"--input {value}: no such file or folder")
    with err_console.status(f"Uploading {path}…", spinner="dots"), registry() as client:
        uploaded = upload_input(client, path)
    return f"{path.resolve()} (uploaded {uploaded.digest[:19]})", uploaded


def invoke(
    name: str,
    input_: str,
    deployment_name: str,
    input_type: str,
    output_path: str,
    set_: list[str],
    mini_batch_size: int | None,
    instance_count: int | None,
    job_name: str,
    stream: bool,
    output: OutputFormat,
) -> None:
    overrides = parse_overrides(set_)
    if mini_batch_size is not None:
        overrides.mini_batch_size = mini_batch_size
    if instance_count is not None:
        overrides.instance_count = instance_count
    if output_path and "://" not in output_path:
        output_path = str(Path(output_path).expanduser().resolve())
    given, uploaded = local_input(input_)
    with batch_client() as client:
        job = client.invoke(
            name,
            input=given,
            input_artifact=uploaded,
            deployment=deployment_name,
            input_type=input_type,
            output_path=output_path,
            overrides=overrides,
            job_name=job_name,
        )
        err_console.print(f"Created job {job.name} ({job.progress.files_total} files).")
        if stream:
            job = follow_progress(client, job.name)
    show_job(job, output)
    if stream and state_name(job) != "Completed":
        raise CliError(f"job {job.name} {state_name(job)}: {job.status_message}")


@app.command()
def show(
    name: str = JobNameOption,
    output: OutputFormat = OutputOption,
    web: bool = WebOption,
) -> None:
    """Show a job: state, progress, errors, output and cost."""
    with batch_client() as client:
        job = client.get(name)
    if web:
        open_in_portal(f"jobs/{quote(name, safe='')}")
    show_job(job, output)


def open_in_portal(page: str) -> None:
    """az's `--web` opens Studio; Sluice's studio is the portal: its page, in a browser when
    this machine has one, and its address printed either way."""
    state = LocalPlatform(Settings()).load_state()
    if state is None or not state.management_url:
        err_console.print(
            "The portal's address is not known here (no local platform): open "
            f"<management URL>/portal/#/{page}",
            markup=False,
        )
        return
    url = f"{state.management_url}/portal/#/{page}"
    opened = webbrowser.open(url)
    err_console.print(f"{'Opened' if opened else 'Portal'}: {url}", markup=False)


@app.command("list")
def list_(
    endpoint_name: str = typer.Option("", "--endpoint-name", "-e", help="only this endpoint's"),
    output: OutputFormat = OutputOption,
) -> None:
    """List batch jobs, newest first."""
    with batch_client() as client:
        show_jobs(client.list(endpoint=endpoint_name), output, "Jobs")


@app.command()
def stream(name: str = JobNameOption) -> None:
    """Follow a job's logs (the runner's and every worker's) until it ends."""
    with batch_client() as client:
        for line in client.logs(name, follow=True):
            console.print(f"[dim]{line.source}[/] {line.line}", highlight=False, soft_wrap=True)
        job = client.get(name)
    err_console.print(f"Job {name}: {state_name(job)}. {job.status_message}", highlight=False)


@app.command()
def cancel(name: str = JobNameOption, output: OutputFormat = OutputOption) -> None:
    """Cancel a queued or running job: its workers stop, it ends Canceled."""
    with batch_client() as client:
        job = client.cancel(name)
    err_console.print(f"Job {name}: {state_name(job)}.")
    show_job(job, output)


@app.command()
def download(
    name: str = JobNameOption,
    output_name: str = typer.Option("score", "--output-name", help="the job's output: score"),
    download_path: str = typer.Option(".", "--download-path", "-p", help="target folder"),
) -> None:
    """Copy a finished job's output to <download-path>/named-outputs/score/ (from the batch
    service, wherever it runs)."""
    if output_name != "score":
        raise CliError(f"--output-name {output_name!r}: a batch job has one output, 'score'")
    target = Path(download_path).expanduser().resolve() / "named-outputs" / "score"
    with batch_client() as client:
        save_download(client.download_output(name), target, f"{name}'s output")
    err_console.print(f"Downloaded {name}'s output to {target}")
