"""Batch jobs end to end through the `sluice` CLI, on real processes.

Real nats-server, SecantusDB, registry and batch service; workers are real
processes running real scoring scripts over small CSV folders. Each test
says what Azure's batch endpoints promise and checks the output file row by
row.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

import psutil
import pytest
import yaml
from faststream.nats import NatsBroker
from pymongo import MongoClient

from sluice.common.resources import BatchEndpointSpec, ProvisioningState
from sluice.common.settings import TracingSettings
from sluice.common.supervisor import ComponentError
from sluice.common.trace_files import trace_spans
from sluice.common.tracing import TRACES
from sluice.sdk.batch import TERMINAL, BatchClient, state_name
from sluice.sdk.client import RegistryClient
from sluice.sdk.specs import load_batch_deployment, load_batch_endpoint
from sluice.testing.cli import Cli as InProcessCli
from sluice.testing.plugin import RunningService, ServiceStarter, traversable_dir
from sluice.testing.wait import wait_for

# Each test starts worker processes that import pandas; on a loaded 2-core machine that
# alone can take tens of seconds.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# Azure-style scoring script: one line per input row, "file,x,prediction".
SCRIPT = """\
import os
import time

import pandas as pd


def init():
    global factor
    factor = float(os.environ.get("FACTOR", "2"))


def run(mini_batch):
    gate = os.environ.get("GATE")  # a test holds the job running until it creates this file
    while gate and not os.path.exists(gate):
        time.sleep(0.05)
    rows = []
    for path in mini_batch:
        name = os.path.basename(path)
        if "bad" in name:
            raise ValueError(f"cannot score {name}")
        time.sleep(float(os.environ.get("DELAY_S", "0")))
        for x in pd.read_csv(path)["x"]:
            rows.append(f"{name},{x},{x * factor}")
    return rows
"""

# Returns a DataFrame, as most of Azure's samples do.
FRAME_SCRIPT = """\
import os

import pandas as pd


def init():
    pass


def run(mini_batch):
    frames = []
    for path in mini_batch:
        data = pd.read_csv(path)
        frames.append(pd.DataFrame({"file": os.path.basename(path), "y": data["x"] * 2}))
    return pd.concat(frames)
"""


class ChildCli:
    """`sluice ...` as a process of its own (InProcessCli's `complete`, in a child)."""

    def complete(
        self, *args: str, env: dict[str, str], cwd: Path
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sluice.sdk.cli", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            cwd=cwd,
            timeout=180,
            check=False,
        )


class Cli:
    """`sluice ...` pointed at this test's services, in the test's process (see
    sluice.testing.cli: a CLI process per call cost this file a minute and a half).

    Waiting polls the batch service directly; what a test asserts comes from the CLI.
    """

    def __init__(self, runner: InProcessCli | ChildCli, env: dict[str, str], cwd: Path):
        self.runner = runner
        self.env = env
        self.cwd = cwd

    def state(self, name: str) -> Any:
        with BatchClient(self.env["SLUICE_BATCH_ADDRESS"], self.env["SLUICE_ADMIN_TOKEN"]) as c:
            return c.get(name)

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = self.runner.complete(*args, env=self.env, cwd=self.cwd)
        if ok:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def elsewhere(self, *args: str) -> subprocess.CompletedProcess[str]:
        """As a CLI on another machine: the services' addresses and the token, but a state
        folder of its own, empty, so no job folder or output path is there to copy from."""
        empty = self.cwd / "elsewhere"
        empty.mkdir(exist_ok=True)
        assert not any(empty.iterdir())
        env = {**self.env, "SLUICE_STATE_DIR": str(empty)}
        return self.runner.complete(*args, env=env, cwd=self.cwd)

    def error(self, *args: str) -> str:
        result = self(*args, ok=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        return result.stderr

    def job(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.json("job", "show", "-n", name)
        return found

    def finished(self, name: str, timeout: float = 120) -> dict[str, Any]:
        wait_for(lambda: state_name(self.state(name)) in TERMINAL, f"job {name} to end", timeout)
        return self.job(name)


@pytest.fixture
def batch(start_service: ServiceStarter, registry: RunningService) -> RunningService:
    # Data assets are the registry's: the batch service asks it for them. 127.0.0.2 (loopback,
    # refused by default) is listed for http inputs: test_http_and_data_asset_inputs serves there.
    start_service.settings = start_service.settings.model_copy(
        update={"registry_address": registry.address, "batch_url_allow": "127.0.0.2"}
    )
    return start_service("batch")


@pytest.fixture
def in_process(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> InProcessCli:
    return InProcessCli(capsys, monkeypatch)


@pytest.fixture
def cli(
    batch: RunningService, registry: RunningService, tmp_path: Path, in_process: InProcessCli
) -> Cli:
    return cli_for(batch, registry, tmp_path, in_process)


def cli_for(
    batch: RunningService, registry: RunningService, tmp_path: Path, runner: InProcessCli
) -> Cli:
    env = {
        "SLUICE_REGISTRY_ADDRESS": registry.address,
        "SLUICE_BATCH_ADDRESS": batch.address,
        "SLUICE_ADMIN_TOKEN": batch.settings.admin_token or "",
        "SLUICE_STATE_DIR": str(batch.settings.state_dir),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    return Cli(runner, env, tmp_path)


def make_csvs(
    folder: Path, files: int, rows: int, *, prefix: str = "f", bad: tuple[int, ...] = ()
) -> list[str]:
    """CSV files <prefix>000.csv... (<prefix>000-bad.csv for `bad`) with a column x.

    Returns the lines SCRIPT writes for them, in file order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    expected = []
    for i in range(files):
        name = f"{prefix}{i:03d}{'-bad' if i in bad else ''}.csv"
        values = [(ord(prefix[0]) * 100 + i) * 1000 + r for r in range(rows)]
        (folder / name).write_text("x\n" + "".join(f"{v}\n" for v in values))
        if i not in bad:
            expected.extend(f"{name},{v},{v * 2.0}" for v in values)
    return expected


def deploy(
    cli: Cli,
    endpoint: str,
    *,
    script: str = SCRIPT,
    name: str = "score",
    settings: str = "",
    env: dict[str, str] | None = None,
    with_cli: bool = False,
) -> None:
    """A batch endpoint and its default deployment running `script` (2 workers, 2 files each)."""
    folder = cli.cwd / f"{endpoint}-{name}"
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "score.py").write_text(script)
    (folder / "endpoint.yml").write_text(f"name: {endpoint}\n")
    variables = "".join(f"    {k}: '{v}'\n" for k, v in (env or {}).items())
    (folder / "deployment.yml").write_text(
        f"name: {name}\nendpoint_name: {endpoint}\ntype: model\n"
        "code_configuration: {code: code/, scoring_script: score.py}\n"
        "resources: {instance_count: 1}\n"
        "settings:\n  mini_batch_size: 2\n  max_concurrency_per_instance: 2\n"
        "  retry_settings: {max_retries: 1, timeout: 30}\n"
        + (f"  environment_variables:\n{variables}" if variables else "")
        + settings
    )
    if with_cli:
        cli("batch-endpoint", "create", "-f", str(folder / "endpoint.yml"))
        cli("batch-deployment", "create", "-f", str(folder / "deployment.yml"), "--set-default")
        return
    with RegistryClient(cli.env["SLUICE_REGISTRY_ADDRESS"], cli.env["SLUICE_ADMIN_TOKEN"]) as c:
        c.create_batch_endpoint(load_batch_endpoint(folder / "endpoint.yml").spec)
        spec = load_batch_deployment(folder / "deployment.yml", c.upload).spec
        c.create_batch_deployment(spec, set_default=True)


def invoke(cli: Cli, endpoint: str, data: Path | str, *extra: str) -> dict[str, Any]:
    job: dict[str, Any] = cli.json(
        "batch-endpoint", "invoke", "-n", endpoint, "--input", str(data), *extra
    )
    return job


def output_lines(job: dict[str, Any]) -> list[str]:
    return (Path(job["output_path"]) / job["output_file_name"]).read_text().splitlines()


STARTING = re.compile(r" (worker-\d+) starting \(python \S+, pid (\d+)\)$", re.MULTILINE)


def workers_of(cli: Cli, job: str) -> dict[str, psutil.Process]:
    """The job's live workers by name, found by the pid each one logs when it starts (a worker
    that was a spare shows the spare's environment in /proc, which cannot name its job)."""
    found = {}
    for log in (Path(cli.env["SLUICE_STATE_DIR"]) / "jobs" / job / "logs").glob("worker-*.log"):
        for name, pid in STARTING.findall(_read(log)):
            try:
                proc = psutil.Process(int(pid))
                if proc.status() != psutil.STATUS_ZOMBIE and "sluice.batch" in " ".join(
                    proc.cmdline()
                ):
                    found[name] = proc
            except psutil.Error:
                continue
    return found


def spares_of(batch: RunningService) -> list[psutil.Process]:
    """Spare workers the batch service keeps waiting."""
    found = []
    for child in psutil.Process(batch.process.pid).children():
        try:
            if "sluice.batch.spare" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone, or a zombie not reaped yet
            continue
    return found


def describe(processes: list[psutil.Process]) -> list[str]:
    """pid, state, age and user of each process (a failure's message)."""
    described = []
    for proc in processes:
        try:
            age = time.time() - proc.create_time()
            described.append(f"{proc.pid} {proc.status()} {age:.0f}s {proc.username()}")
        except psutil.Error:
            described.append(f"{proc.pid} gone")
    return described


def test_folder_of_csvs_every_row_once_in_order(cli: Cli, batch: RunningService) -> None:
    deploy(cli, "csv-batch", with_cli=True)
    # Creating the deployment started its 2 workers' processes as spares.
    wait_for(lambda: len(spares_of(batch)) == 2, "2 spare workers")
    data = cli.cwd / "data"
    # Files in stable order by relative path: g000, g001, then sub/f000 ... sub/f004.
    expected = make_csvs(data, 2, 2, prefix="g") + make_csvs(data / "sub", 5, 3)
    result = cli(
        "batch-endpoint", "invoke", "-n", "csv-batch", "--input", "data", "--stream", "-o", "json"
    )
    job = json.loads(result.stdout)
    assert job["status"] == "Completed", job["status_message"]
    assert output_lines(job) == expected
    assert job["progress"]["mini_batches_total"] == job["progress"]["mini_batches_done"] == 4
    assert job["progress"]["files_succeeded"] == 7 and job["progress"]["files_failed"] == 0
    assert job["workers"] == 2
    assert job["cost"]["worker_seconds"] > 0 and job["cost"]["cost"] > 0
    assert job["cost"]["instance_type"] == "Standard_DS3_v2"
    # One instance ran both workers (max_concurrency_per_instance: 2): billed once, as Azure
    # bills a node, not per worker process.
    cost = job["cost"]
    assert cost["instance_seconds"] == pytest.approx(cost["worker_seconds"] / 2, abs=0.002)
    assert cost["cost"] == pytest.approx(cost["worker_seconds"] / 2 / 3600 * 0.293, abs=2e-6)
    # Jobs are listed per endpoint and per deployment, and their logs kept and streamable.
    assert [j["name"] for j in cli.json("batch-endpoint", "list-jobs", "-n", "csv-batch")] == [
        job["name"]
    ]
    listed = cli.json("batch-deployment", "list-jobs", "-n", "score", "-e", "csv-batch")
    assert [j["status"] for j in listed] == ["Completed"]
    logs = cli("job", "stream", "-n", job["name"]).stdout
    assert "runner" in logs and "worker-0" in logs and "worker-1" in logs
    assert "init() done" in logs and "mini-batch 3 done" in logs
    assert "worker-0 started from a warm spare" in logs
    assert "worker-1 started from a warm spare" in logs
    # Downloaded as Azure's samples read it, named-outputs/score/<file>, streamed by the batch
    # service (DownloadJobOutput): the CLI's own state folder holds nothing to copy.
    downloaded = cli.elsewhere("job", "download", "-n", job["name"], "--download-path", "dl")
    assert downloaded.returncode == 0, downloaded.stderr
    got = cli.cwd / "dl/named-outputs/score"
    assert sorted(p.name for p in got.iterdir()) == ["predictions.csv"]
    assert (got / "predictions.csv").read_bytes() == (
        Path(job["output_path"]) / "predictions.csv"
    ).read_bytes()
    assert (got / "predictions.csv").read_text().splitlines() == expected
    refused = cli.elsewhere("job", "download", "-n", "no-such-job", "-p", "none")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "job 'no-such-job' does not exist" in refused.stderr
    assert not (cli.cwd / "none").exists()
    # Compute exists only while the job runs, and is recorded for the metrics service's costs.
    assert workers_of(cli, job["name"]) == {}
    # ... and 2 spares wait for the next job (started once this one was done).
    wait_for(
        lambda: len(spares_of(batch)) == 2,
        "2 spare workers again",
        why=lambda: f"the batch service's spare-like children: {describe(spares_of(batch))}",
    )
    settings = batch.settings
    with MongoClient(settings.mongodb_uri) as mongo:
        records = list(
            mongo[settings.mongodb_database]["instance_history"].find({"job": job["name"]})
        )
    assert len(records) == 2
    assert {r["kind"] for r in records} == {"batch"}
    assert all(r["stopped_at"] and r["price_per_hour"] == 0.293 for r in records)
    assert [r["instance_share"] for r in records] == [0.5, 0.5]


async def test_state_changes_are_events(cli: Cli, batch: RunningService) -> None:
    settings = batch.settings
    assert settings.nats_url
    broker = NatsBroker(settings.nats_url, logger=None)
    await broker.connect()
    try:
        deploy(cli, "event-batch")
        make_csvs(cli.cwd / "data", 1, 1)
        job = invoke(cli, "event-batch", cli.cwd / "data")
        cli.finished(job["name"])
        js = broker.connection.jetstream()
        sub = await js.subscribe(
            f"{settings.events_subject_prefix}.batch.job.>",
            stream=settings.events_stream,
            ordered_consumer=True,
        )
        seen = []
        while len(seen) < 3:
            msg = await sub.next_msg(timeout=10)
            event = json.loads(msg.data)
            if event["subject"] == job["name"]:
                seen.append((msg.subject.rsplit(".", 1)[1], event["data"]["state"]))
        assert seen == [("queued", "Queued"), ("running", "Running"), ("completed", "Completed")]
        await sub.unsubscribe()
    finally:
        await broker.stop()


TRACED_SCRIPT = """\
def init():
    pass


def run(mini_batch):
    if any("-bad" in path for path in mini_batch):
        raise ValueError("a bad file")
    return [path for path in mini_batch]
"""


async def test_a_traced_job_is_one_trace_with_a_span_per_mini_batch(
    start_service: ServiceStarter, registry: RunningService, tmp_path: Path
) -> None:
    tracing = TracingSettings(enabled=True, sampling_ratio=1.0)
    start_service.settings = start_service.settings.model_copy(
        update={"registry_address": registry.address, "tracing": tracing}
    )
    batch = start_service("batch")
    settings = batch.settings
    cli = Cli(  # a CLI process: tracing configured in this one would stay for later tests
        ChildCli(),
        {
            "SLUICE_REGISTRY_ADDRESS": registry.address,
            "SLUICE_BATCH_ADDRESS": batch.address,
            "SLUICE_ADMIN_TOKEN": settings.admin_token or "",
            "SLUICE_STATE_DIR": str(settings.state_dir),
            "SLUICE_TRACING__ENABLED": "true",
            "SLUICE_TRACING__SAMPLING_RATIO": "1.0",
        },
        tmp_path,
    )
    deploy(cli, "traced-batch", script=TRACED_SCRIPT)
    make_csvs(tmp_path / "data", 3, 1, bad=(1,))  # mini-batches [f000, f001-bad], [f002]
    invoked = cli("batch-endpoint", "invoke", "-n", "traced-batch", "--input", "data", "-o", "json")
    job = json.loads(invoked.stdout)
    match = re.search(r"trace ([0-9a-f]{32})", invoked.stderr)
    assert match, invoked.stderr
    trace_id = match.group(1)
    assert cli.finished(job["name"])["status"] == "Completed"

    folder = settings.state_dir / TRACES
    spans: dict[str, list[dict[str, Any]]] = {}

    def job_and_mini_batches() -> bool:
        spans.clear()
        for span in trace_spans(folder, trace_id):
            spans.setdefault(span["name"], []).append(span)
        return len(spans.get("job", [])) == 1 and len(spans.get("mini-batch", [])) == 2

    wait_for(job_and_mini_batches, "the job's span and its 2 mini-batches'", deadline=15)
    (job_span,) = spans["job"]
    invoke_span = next(
        s for s in trace_spans(folder, trace_id) if s["span_id"] == job_span["parent_id"]
    )
    assert invoke_span["service"] == "batch" and invoke_span["kind"] == "SERVER"
    assert job_span["attributes"]["sluice.job"] == job["name"]
    assert job_span["attributes"]["sluice.job.state"] == "Completed"
    failed, scored = sorted(
        spans["mini-batch"], key=lambda s: s["attributes"]["sluice.batch.index"]
    )
    assert failed["parent_id"] == scored["parent_id"] == job_span["span_id"]
    assert failed["status"] == "ERROR" and "a bad file" in failed["status_message"]
    assert failed["attributes"]["sluice.batch.attempts"] == 2  # max_retries: 1
    assert scored["status"] == "UNSET" and scored["attributes"]["sluice.batch.rows"] == 1
    assert job_span["start"] <= failed["start"] < failed["end"] <= job_span["end"]
    shown = cli("trace", "show", trace_id).stdout
    assert "batch: job" in shown and "! exception ValueError: a bad file" in shown

    # The job's state-change events carry its trace (CloudEvents' traceparent).
    assert settings.nats_url
    broker = NatsBroker(settings.nats_url, logger=None)
    await broker.connect()
    try:
        js = broker.connection.jetstream()
        sub = await js.subscribe(
            f"{settings.events_subject_prefix}.batch.job.>",
            stream=settings.events_stream,
            ordered_consumer=True,
        )
        parents = {}
        while len(parents) < 3:
            event = json.loads((await sub.next_msg(timeout=10)).data)
            if event["subject"] == job["name"]:
                parents[event["data"]["state"]] = event["traceparent"].split("-")[2]
        await sub.unsubscribe()
    finally:
        await broker.stop()
    assert parents == {
        "Queued": invoke_span["span_id"],
        "Running": job_span["span_id"],
        "Completed": job_span["span_id"],
    }


def test_dataframe_rows_space_separated_and_parquet(cli: Cli) -> None:
    deploy(cli, "frame-batch", script=FRAME_SCRIPT)
    make_csvs(cli.cwd / "data", 3, 2)
    job = cli.finished(invoke(cli, "frame-batch", cli.cwd / "data")["name"])
    # Azure's append_row: DataFrame rows without header or index, separated by spaces.
    assert output_lines(job)[:3] == ["f000.csv 20400000", "f000.csv 20400002", "f001.csv 20402000"]
    assert len(output_lines(job)) == 6
    parquet = cli.finished(
        invoke(cli, "frame-batch", cli.cwd / "data", "--set", "output_file_name=scores.parquet")[
            "name"
        ]
    )
    import pandas as pd

    frame = pd.read_parquet(Path(parquet["output_path"]) / "scores.parquet")
    assert list(frame.columns) == ["file", "y"]
    assert frame["y"].tolist() == [20400000, 20400002, 20402000, 20402002, 20404000, 20404002]


SLOW_SCRIPT = """\
import os
import time


def init():
    pass


def run(mini_batch):
    for path in mini_batch:
        if "slow" in os.path.basename(path):
            time.sleep(30)
    return [os.path.basename(p) for p in mini_batch]
"""


def test_mini_batches_that_time_out_fail_by_themselves_not_the_job(cli: Cli) -> None:
    """Each attempt over retry_settings.timeout ends its worker: that is the mini-batch's
    failure (error_threshold decides), not a worker dying; ten of them, more than the
    job's allowance of unexpected worker deaths (3 x 2 workers + 3), leave the job alone."""
    deploy(cli, "slow-batch", script=SLOW_SCRIPT)
    data = cli.cwd / "slow-data"
    data.mkdir()
    for i in range(10):
        (data / f"slow{i:02d}.csv").write_text("x\n1\n")
    (data / "zfast.csv").write_text("x\n1\n")
    job = invoke(cli, "slow-batch", data, "-m", "1", "--set", "max_retries=0", "timeout=1")
    job = cli.finished(job["name"], timeout=150)
    assert job["status"] == "Completed", job.get("status_message") or job
    assert job["progress"]["mini_batches_failed"] == 10
    assert job["progress"]["mini_batches_done"] == 1
    assert output_lines(job) == ["zfast.csv"]


LEVEL_SCRIPT = """\
import logging
import sys


def init():
    pass


def run(mini_batch):
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    return [f"{level} {' '.join(sys.argv[1:])}" for _ in mini_batch]
"""


def test_logging_level_is_the_scripts_and_its_argument(cli: Cli) -> None:
    deploy(cli, "level-batch", script=LEVEL_SCRIPT, settings="  logging_level: debug\n")
    make_csvs(cli.cwd / "level-data", 1, 1)
    job = cli.finished(invoke(cli, "level-batch", cli.cwd / "level-data")["name"])
    assert output_lines(job) == ["DEBUG --logging_level debug"]


def test_error_threshold_fails_or_completes(cli: Cli) -> None:
    deploy(cli, "err-batch", settings="  error_threshold: -1\n")
    expected = make_csvs(cli.cwd / "data", 6, 1, bad=(1, 4))
    job = cli.finished(invoke(cli, "err-batch", cli.cwd / "data")["name"])
    # -1: failures never fail the job; the good mini-batch's rows are all there.
    assert job["status"] == "Completed"
    assert job["progress"]["files_failed"] == 4  # two mini-batches of two files each
    assert job["progress"]["mini_batches_failed"] == 2
    # Mini-batches [f000, bad001] and [bad004, f005] failed; [f002, f003] was written.
    assert output_lines(job) == [line for line in expected if line.startswith(("f002", "f003"))]
    errors = job["errors"]
    assert [e["mini_batch"] for e in errors] == [0, 2]
    assert errors[0]["files"][1].endswith("f001-bad.csv")
    assert "ValueError: cannot score f001-bad.csv" in errors[0]["exception"]
    assert errors[0]["attempts"] == 2  # max_retries=1: tried twice
    failed = cli.finished(
        invoke(cli, "err-batch", cli.cwd / "data", "--set", "error_threshold=1")["name"]
    )
    assert failed["status"] == "Failed"
    assert "more than error_threshold=1" in failed["status_message"]
    assert "bad" in failed["status_message"] and "cannot score" in failed["status_message"]
    assert workers_of(cli, failed["name"]) == {}
    # Every mini-batch failed: there is no output to download, and the CLI says so.
    make_csvs(cli.cwd / "all-bad", 2, 1, bad=(0, 1))
    none = cli.finished(invoke(cli, "err-batch", cli.cwd / "all-bad")["name"])
    assert none["status"] == "Failed" and not Path(none["output_path"]).exists()
    refused = cli.elsewhere("job", "download", "-n", none["name"], "-p", "dl")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"job {none['name']} (Failed) wrote no output" in " ".join(refused.stderr.split())
    assert not (cli.cwd / "dl").exists()


# Azure's common pattern: a file it cannot read is logged and skipped, not raised.
SKIP_SCRIPT = """\
import os


def init():
    pass


def run(mini_batch):
    return [os.path.basename(path) for path in mini_batch if "bad" not in path]
"""


def test_successes_are_the_items_run_returned(cli: Cli) -> None:
    """Azure: each item run() returns is one input that succeeded; the mini-batch's other
    files failed and count toward error_threshold; a job where no run() returned anything
    fails with Azure's message."""
    deploy(cli, "skip-batch", script=SKIP_SCRIPT, settings="  error_threshold: -1\n")
    make_csvs(cli.cwd / "data", 6, 1, bad=(1, 4))  # [f000, f001-bad] [f002, f003] [f004-bad, f005]
    job = cli.finished(invoke(cli, "skip-batch", cli.cwd / "data")["name"])
    assert job["status"] == "Completed", job["status_message"]
    progress = job["progress"]
    assert progress["mini_batches_done"] == 3 and progress["mini_batches_failed"] == 0
    assert progress["files_succeeded"] == 4 and progress["files_failed"] == 2
    assert job["status_message"] == "4 of 6 files scored; 2 failed"
    assert output_lines(job) == ["f000.csv", "f002.csv", "f003.csv", "f005.csv"]
    shown = cli("job", "show", "-n", job["name"], "--web")
    assert "3/3 mini-batches, 2 files failed" in shown.stdout
    # No `sluice up` platform here: the portal's page is named, not guessed.
    assert "portal's address is not known here" in " ".join(shown.stderr.split())
    # The skipped files count toward the threshold as failures do.
    failed = cli.finished(
        invoke(cli, "skip-batch", cli.cwd / "data", "--set", "error_threshold=1")["name"]
    )
    assert failed["status"] == "Failed"
    assert "2 files failed, more than error_threshold=1" in failed["status_message"]
    assert "run() returned 1 items for 2 files" in failed["status_message"]
    # Nothing returned by any mini-batch: the job fails (also with error_threshold -1).
    make_csvs(cli.cwd / "all-bad", 3, 1, bad=(0, 1, 2))
    none = cli.finished(invoke(cli, "skip-batch", cli.cwd / "all-bad")["name"])
    assert none["status"] == "Failed"
    assert none["status_message"] == "No succeeded mini batch item returned from run()"
    assert none["progress"]["files_succeeded"] == 0 and none["progress"]["files_failed"] == 3


# Azure's custom-output sample (how-to-deploy-model-custom-output, batch_driver.py): the script
# writes a file per input into AZUREML_BI_OUTPUT_PATH, no makedirs, and returns mini_batch.
# It also tries to write next to that folder and into the datastore (PROBE): refused.
CUSTOM_OUTPUT_SCRIPT = """\
import os

import pandas as pd


def init():
    global output_path
    output_path = os.environ["AZUREML_BI_OUTPUT_PATH"]


def probe(folder):
    try:
        with open(os.path.join(folder, "intruder.txt"), "w") as out:
            out.write("written")
        return "written"
    except OSError:
        return "refused"


def run(mini_batch):
    for file_path in mini_batch:
        data = pd.read_csv(file_path)
        data["y"] = data["x"] * 2
        name = os.path.splitext(os.path.basename(file_path))[0]
        data.to_csv(os.path.join(output_path, name + ".csv"), index=False)
    seen = [probe(os.path.dirname(output_path)), probe(os.environ["PROBE"])]
    with open(os.path.join(output_path, "probes.txt"), "w") as out:
        out.write(" ".join(seen))
    try:
        os.symlink("/etc/shadow", os.path.join(output_path, "shadow-" + name))
    except FileExistsError:  # a second attempt
        pass
    return mini_batch
"""


def run_summary_only(cli: Cli, endpoint: str) -> None:
    """A summary_only job running Azure's custom-output script: its files, and only its
    files, end up in the job's output folder, the platform's."""
    datastore = Path(cli.env["SLUICE_STATE_DIR"]) / "datastore"
    deploy(
        cli,
        endpoint,
        script=CUSTOM_OUTPUT_SCRIPT,
        settings="  output_action: summary_only\n",
        env={"PROBE": str(datastore)},
    )
    make_csvs(cli.cwd / "data", 3, 2)
    job = cli.finished(invoke(cli, endpoint, cli.cwd / "data")["name"])
    assert job["status"] == "Completed", job["status_message"]
    assert job["progress"]["files_succeeded"] == 3
    output = Path(job["output_path"])
    assert sorted(p.name for p in output.iterdir()) == [
        "f000.csv",
        "f001.csv",
        "f002.csv",
        "probes.txt",
    ]  # fmt: skip  (no predictions.csv, no link)
    assert (output / "f001.csv").read_text().splitlines() == [
        "x,y", "10201000,20402000", "10201001,20402002"
    ]  # fmt: skip
    if os.geteuid() == 0:  # as another user, workers run as the platform's (docs/security.md)
        assert (output / "probes.txt").read_text() == "refused refused"
        assert not (datastore / "intruder.txt").exists()
    for path in [output, *output.iterdir()]:  # handed back: the platform's, not writable
        assert path.stat().st_uid == os.geteuid(), path
        assert not path.stat().st_mode & 0o022, path
    downloaded = cli.elsewhere("job", "download", "-n", job["name"], "--download-path", "dl")
    assert downloaded.returncode == 0, downloaded.stderr
    got = cli.cwd / "dl/named-outputs/score"
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in output.iterdir())
    for path in output.iterdir():
        assert (got / path.name).read_bytes() == path.read_bytes(), path


def test_summary_only_scripts_write_their_own_output(cli: Cli) -> None:
    run_summary_only(cli, "custom-batch")


def test_summary_only_in_a_landlock_sandbox(
    start_service: ServiceStarter,
    registry: RunningService,
    tmp_path: Path,
    in_process: InProcessCli,
) -> None:
    start_service.settings = start_service.settings.model_copy(
        update={"registry_address": registry.address, "landlock": True}
    )
    run_summary_only(cli_for(start_service("batch"), registry, tmp_path, in_process), "ll-custom")


def test_datastore_uri_input(cli: Cli) -> None:
    """Azure's `--input azureml://datastores/<ds>/paths/<p>`: the datastore's folder (or file),
    within the same folders as every other input."""
    deploy(cli, "ds-batch")
    folder = Path(cli.env["SLUICE_STATE_DIR"]) / "datastore" / "workspaceblobstore" / "ds-in"
    expected = make_csvs(folder, 3, 2)
    uri = "azureml://datastores/workspaceblobstore/paths/ds-in"
    job = cli.finished(invoke(cli, "ds-batch", uri, "--input-type", "uri_folder")["name"])
    assert job["status"] == "Completed", job["status_message"]
    assert output_lines(job) == expected
    assert job["input"] == uri
    one = cli.finished(
        invoke(cli, "ds-batch", f"{uri}/f001.csv", "--input-type", "uri_file")["name"]
    )
    assert output_lines(one) == expected[2:4]
    assert "outside the folders" in cli.error(
        "batch-endpoint", "invoke", "-n", "ds-batch",
        "--input", "azureml://datastores/workspaceblobstore/paths/../../../etc",
    )  # fmt: skip
    assert "workspaceblobstore/nothing-here does not exist" in cli.error(
        "batch-endpoint", "invoke", "-n", "ds-batch",
        "--input", "azureml://datastores/workspaceblobstore/paths/nothing-here",
    )  # fmt: skip
    # The path `data show` prints for an uploaded folder (azureml://artifacts/...) is an input.
    cli("data", "create", "-n", "ds-rows", "-v", "1", "-t", "uri_folder", "-p", str(folder))
    uploaded = cli.json("data", "show", "-n", "ds-rows", "-v", "1")["path"]
    assert uploaded.startswith("azureml://artifacts/sha256:"), uploaded
    assert output_lines(cli.finished(invoke(cli, "ds-batch", uploaded)["name"])) == expected
    assert "not an uploaded artifact" in cli.error(
        "batch-endpoint", "invoke", "-n", "ds-batch", "--input", "azureml://artifacts/nope"
    )
    # az's invocation YAML (--file): inputs and a uri_file output, as Microsoft's how-tos write
    # it; the job shows Azure's id and type, and list-jobs -d filters by deployment.
    (cli.cwd / "inputs.yml").write_text(
        f"inputs:\n  heart_dataset:\n    type: uri_folder\n    path: {uri}\n"
        "outputs:\n  score:\n    type: uri_file\n"
        "    path: azureml://datastores/workspaceblobstore/paths/ds-out/preds.csv\n"
    )
    by_file = cli.json("batch-endpoint", "invoke", "-n", "ds-batch", "-f", "inputs.yml")
    done = cli.finished(by_file["name"])
    assert done["status"] == "Completed", done["status_message"]
    assert (done["output_file_name"], Path(done["output_path"]).name) == ("preds.csv", "ds-out")
    assert output_lines(done) == expected
    assert done["type"] == "pipeline" and done["id"].endswith(f"/jobs/{done['name']}")
    inputs = json.dumps({"data": {"type": "uri_file", "path": f"{uri}/f001.csv"}})
    by_json = cli.finished(
        cli.json("batch-endpoint", "invoke", "-n", "ds-batch", "--inputs", inputs)["name"]
    )
    assert output_lines(by_json) == expected[2:4]
    listed = cli.json("batch-endpoint", "list-jobs", "-n", "ds-batch", "-d", "score")
    assert {by_file["name"], by_json["name"]} <= {j["name"] for j in listed}
    assert cli.json("batch-endpoint", "list-jobs", "-n", "ds-batch", "-d", "other") == []
    assert "one of --input, --file" in cli.error(
        "batch-endpoint", "invoke", "-n", "ds-batch", "--input", uri, "--inputs", inputs
    )


def test_worker_killed_mid_batch_every_row_once(cli: Cli, batch: RunningService) -> None:
    deploy(cli, "kill-batch", env={"DELAY_S": "1"})
    expected = make_csvs(cli.cwd / "data", 8, 3)
    job = invoke(cli, "kill-batch", cli.cwd / "data")
    logs = Path(batch.settings.state_dir) / "jobs" / job["name"] / "logs"
    # Kill worker-0 while it holds a mini-batch (started, not done).
    wait_for(lambda: "attempt 1" in _read(logs / "worker-0.log"), "worker-0 busy")
    victim = workers_of(cli, job["name"])["worker-0"]
    # Deployment code sees none of the platform's secrets.
    assert not {"SLUICE_ADMIN_TOKEN", "SLUICE_SECRET_KEY", "SLUICE_MONGODB_URI"} & set(
        victim.environ()
    )
    victim.send_signal(signal.SIGKILL)
    done = cli.finished(job["name"])
    assert done["status"] == "Completed", done["status_message"]
    assert output_lines(done) == expected
    assert done["progress"]["mini_batches_done"] == 4
    assert "exited with code -9" in _read(logs / "runner.log")
    # The killed worker's mini-batch came back (un-acked) and ran again.
    assert any("attempt 2" in _read(log) for log in logs.glob("worker-*.log"))


def test_worker_killed_in_its_last_attempt_fails_that_mini_batch(
    cli: Cli, batch: RunningService
) -> None:
    deploy(cli, "last-batch", env={"DELAY_S": "2"})
    expected = make_csvs(cli.cwd / "data", 4, 1)
    job = invoke(
        cli,
        "last-batch",
        cli.cwd / "data",
        "--set",
        "retry_settings.max_retries=0 max_concurrency_per_instance=1",
    )
    logs = Path(batch.settings.state_dir) / "jobs" / job["name"] / "logs"
    wait_for(lambda: "mini-batch 0 attempt 1" in _read(logs / "worker-0.log"), "worker-0 busy")
    for proc in workers_of(cli, job["name"]).values():
        proc.send_signal(signal.SIGKILL)
    done = cli.finished(job["name"])
    # No attempt is left for mini-batch 0: it fails (and is named), the rest completes.
    assert done["status"] == "Completed", done["status_message"]
    assert done["progress"]["mini_batches_failed"] == 1
    assert done["errors"][0]["mini_batch"] == 0
    assert "died during the last attempt" in done["errors"][0]["exception"]
    assert output_lines(done) == expected[2:]


def test_cancel_stops_workers(cli: Cli) -> None:
    deploy(cli, "cancel-batch", env={"DELAY_S": "2"})
    make_csvs(cli.cwd / "data", 10, 1)
    job = invoke(cli, "cancel-batch", cli.cwd / "data")
    wait_for(lambda: len(workers_of(cli, job["name"])) == 2, "workers")
    canceled = cli.json("job", "cancel", "-n", job["name"])
    assert canceled["status"] == "Canceled"
    assert workers_of(cli, job["name"]) == {}
    assert "already Canceled" in cli.error("job", "cancel", "-n", job["name"])


def test_a_service_restart_resumes_the_job_and_costs_no_attempt(
    cli: Cli, batch: RunningService, start_service: ServiceStarter, gates: Path
) -> None:
    """A batch service restart stops the job's workers; a mini-batch one was scoring goes
    back to the queue as interrupted, not as a used attempt: with max_retries=0 it runs
    again when the service is back, and the job completes with every row."""
    gate = gates / "gate"
    deploy(cli, "resume-batch", env={"GATE": str(gate)})
    expected = make_csvs(cli.cwd / "data", 4, 1)
    job = invoke(
        cli,
        "resume-batch",
        cli.cwd / "data",
        "--set",
        "retry_settings.max_retries=0 max_concurrency_per_instance=1",
    )
    logs = Path(batch.settings.state_dir) / "jobs" / job["name"] / "logs"
    wait_for(lambda: "mini-batch 0 attempt 1" in _read(logs / "worker-0.log"), "worker-0 busy")
    # Its only attempt is under way (run() waits for the gate) when the service stops.
    start_service.stop(batch)
    assert "mini-batch 0 interrupted (delivery 1)" in _read(logs / "worker-0.log")
    gate.touch()
    again = start_service("batch")
    cli.env["SLUICE_BATCH_ADDRESS"] = again.address
    done = cli.finished(job["name"], timeout=90)
    runner_log = _read(logs / "runner.log")
    assert done["status"] == "Completed", (done["status_message"], done["progress"], runner_log)
    assert "resuming job" in runner_log
    assert done["progress"]["mini_batches_failed"] == 0, done["errors"]
    assert output_lines(done) == expected
    # Its second delivery was its first attempt again.
    workers = "".join(_read(log) for log in logs.glob("worker-*.log"))
    assert workers.count("mini-batch 0 attempt 1:") == 2, workers


def test_one_batch_service_per_database(
    batch: RunningService, start_service: ServiceStarter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second batch service on the same database refuses to start, naming the first."""
    monkeypatch.setenv("SLUICE_BATCH_LEASE_TTL_S", "1")
    with pytest.raises(ComponentError) as refused:
        start_service("batch")
    assert refused.value.log_path is not None
    log = _read(refused.value.log_path)
    assert "another batch service uses this database" in log
    assert f"pid {batch.process.pid} " in log
    # Stopped cleanly, the first gives the lease up: the next one starts at once.
    start_service.stop(batch)
    start_service("batch")


def test_bad_inputs_are_refused_at_invoke(cli: Cli) -> None:
    deploy(cli, "bad-batch")
    (cli.cwd / "empty").mkdir()
    # The platform reads no caller's path (its own secrets would be one --input away);
    # a local folder is uploaded by the CLI instead, and outputs stay in its folders too.
    assert "outside the folders the batch service reads" in cli.error(
        "batch-endpoint", "invoke", "-n", "bad-batch", "--input", "file:///etc"
    )
    assert "outside the folders the batch service reads" in cli.error(
        "batch-endpoint", "invoke", "-n", "bad-batch", "--input", ".", "--output-path", "/etc"
    )
    assert "outside the folders" in cli.error(
        "batch-endpoint", "invoke", "-n", "bad-batch", "--input", ".",
        "--output-path", "azureml://datastores/workspaceblobstore/paths/../../../etc",
    )  # fmt: skip
    assert "no such file or folder" in cli.error(
        "batch-endpoint", "invoke", "-n", "bad-batch", "--input", "no/such/folder"
    )
    assert "has no files" in cli.error(
        "batch-endpoint", "invoke", "-n", "bad-batch", "--input", "empty"
    )
    assert "my-data" in cli.error(
        "batch-endpoint", "invoke", "-n", "bad-batch", "--input", "azureml:my-data:1"
    )
    # Loopback is refused unless listed, as 127.0.0.2 is here (tests/security/test_batch_inputs).
    assert "cannot be downloaded" in cli.error(
        "batch-endpoint", "invoke", "-n", "bad-batch", "--input", "http://127.0.0.2:9/x.csv"
    )
    assert "mini_batch_size must be at least 1" in cli.error(
        "batch-endpoint", "invoke", "-n", "bad-batch", "--input", ".", "-m", "0"
    )
    # An earlier job's output is not replaced (as on Azure).
    earlier = Path(cli.env["SLUICE_STATE_DIR"]) / "datastore/workspaceblobstore/earlier"
    earlier.mkdir(parents=True)
    (earlier / "predictions.csv").write_text("kept\n")
    assert "already exists: a job does not overwrite" in cli.error(
        "batch-endpoint", "invoke", "-n", "bad-batch", "--input", ".",
        "--output-path", "azureml://datastores/workspaceblobstore/paths/earlier",
    )  # fmt: skip
    assert (earlier / "predictions.csv").read_text() == "kept\n"
    # Nothing was created by any of them.
    assert cli.json("job", "list") == []


class BlobAccount(SimpleHTTPRequestHandler):
    """A stand-in for Azure Blob Storage (a third-party service): its files, and the
    anonymous List Blobs answer of a folder (one page; paging and the rest are tried in
    services/batch/tests/test_blob_folder.py)."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if query.get("comp") != ["list"]:
            super().do_GET()
            return
        container = Path(self.directory) / parts.path.strip("/")
        prefix = query.get("prefix", [""])[0]
        blobs = "".join(
            f"<Blob><Name>{escape(name)}</Name><Properties><Content-Length>"
            f"{(container / name).stat().st_size}</Content-Length></Properties></Blob>"
            for name in sorted(p.relative_to(container).as_posix() for p in container.rglob("*"))
            if name.startswith(prefix) and (container / name).is_file()
        )
        body = (
            '<?xml version="1.0" encoding="utf-8"?><EnumerationResults>'
            f"<Blobs>{blobs}</Blobs><NextMarker /></EnumerationResults>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_http_and_data_asset_inputs(cli: Cli) -> None:
    deploy(cli, "http-batch")
    served = cli.cwd / "served"
    expected = make_csvs(served, 1, 3)
    in_blobs = make_csvs(cli.cwd / "data" / "csvs", 3, 2, prefix="b")  # container "data"
    handler = partial(BlobAccount, directory=str(cli.cwd))
    server = ThreadingHTTPServer(("127.0.0.2", 0), handler)  # listed in batch_url_allow
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.2:{server.server_address[1]}"
        job = cli.finished(
            invoke(cli, "http-batch", f"{url}/served/f000.csv", "--input-type", "uri_file")["name"]
        )
        # A remote folder is a Blob Storage container path, as azureml-examples give it:
        # https://azuremlexampledata.blob.core.windows.net/data/mnist/sample, uri_folder.
        folder = f"{url}/data/csvs"
        from_blobs = cli.finished(
            invoke(cli, "http-batch", folder, "--input-type", "uri_folder")["name"]
        )
    finally:
        server.shutdown()
    assert job["status"] == "Completed", job["status_message"]
    assert output_lines(job) == expected
    assert from_blobs["status"] == "Completed", from_blobs["status_message"]
    assert output_lines(from_blobs) == in_blobs
    # A registered data asset (uploaded folder) works as Azure's azureml:<name>:<version>.
    cli("data", "create", "-n", "served-csvs", "-v", "1", "-t", "uri_folder", "-p", str(served))
    job = cli.finished(invoke(cli, "http-batch", "azureml:served-csvs:1")["name"])
    assert job["status"] == "Completed", job["status_message"]
    assert output_lines(job) == expected


def test_mlflow_model_without_script(cli: Cli, mlflow_model: Path) -> None:
    folder = cli.cwd / "mlflow"
    folder.mkdir()
    (folder / "endpoint.yml").write_text("name: mlflow-batch\n")
    (folder / "deployment.yml").write_text(
        f"name: mlflow\nendpoint_name: mlflow-batch\ntype: model\nmodel:\n  path: {mlflow_model}\n"
        "settings: {mini_batch_size: 2}\n"
    )
    with RegistryClient(cli.env["SLUICE_REGISTRY_ADDRESS"], cli.env["SLUICE_ADMIN_TOKEN"]) as c:
        c.create_batch_endpoint(load_batch_endpoint(folder / "endpoint.yml").spec)
        c.create_batch_deployment(
            load_batch_deployment(folder / "deployment.yml", c.upload).spec, set_default=True
        )
    data = cli.cwd / "data"
    data.mkdir()
    (data / "a.csv").write_text("x\n1.0\n2.0\n")
    (data / "b.csv").write_text("x\n10.0\n")
    job = cli.finished(invoke(cli, "mlflow-batch", data)["name"])
    assert job["status"] == "Completed", job["status_message"]
    # Azure's MLflow batch output: row, prediction, file.
    rows = [line.split(",") for line in output_lines(job)]
    assert [(r[0], round(float(r[1]), 6), r[2]) for r in rows] == [
        ("0", 3.0, "a.csv"),
        ("1", 5.0, "a.csv"),
        ("0", 21.0, "b.csv"),
    ]


def test_a_models_old_pin_of_a_platform_dependency_does_not_break_the_worker(
    cli: Cli, mlflow_model: Path
) -> None:
    """azureml-examples' heart-classifier MLflow model pins typing-extensions==4.1.1: its
    environment gets it first, which broke the platform's pydantic in the worker
    (`ImportError: cannot import name 'Sentinel'`); the worker's own imports now come
    from the platform (sluice.common.platform_link)."""
    model = cli.cwd / "pinned-model"
    shutil.copytree(mlflow_model, model)
    conda = yaml.safe_load((model / "conda.yaml").read_text())  # read first, as online
    pip = next(dep for dep in conda["dependencies"] if isinstance(dep, dict))
    pip["pip"].append("typing-extensions==4.1.1")
    (model / "conda.yaml").write_text(yaml.safe_dump(conda))
    (cli.cwd / "pinned.yml").write_text(
        "name: pinned\nendpoint_name: pinned-batch\ntype: model\n"
        f"model:\n  path: {model}\nsettings: {{mini_batch_size: 2}}\n"
    )
    with RegistryClient(cli.env["SLUICE_REGISTRY_ADDRESS"], cli.env["SLUICE_ADMIN_TOKEN"]) as c:
        c.create_batch_endpoint(BatchEndpointSpec(name="pinned-batch"))
        c.create_batch_deployment(
            load_batch_deployment(cli.cwd / "pinned.yml", c.upload).spec, set_default=True
        )
    data = cli.cwd / "pinned-data"
    data.mkdir()
    (data / "a.csv").write_text("x\n1.0\n")
    job = cli.finished(invoke(cli, "pinned-batch", data)["name"])
    assert job["status"] == "Completed", job["status_message"]
    assert [line.split(",")[2] for line in output_lines(job)] == ["a.csv"]


def test_a_deployment_whose_environment_does_not_build_fails_at_create(cli: Cli) -> None:
    """As az: `batch-deployment create` waits until the deployment's environment is built.
    A pin no index has fails the create with the installer's message, the deployment shows
    Failed, a job is refused with the reason (none created); an update without the pin
    Succeeds, shows the environment's warnings, and runs jobs."""
    folder = cli.cwd / "env-batch"
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "score.py").write_text(SCRIPT)
    (folder / "bad-env.yml").write_text(
        "dependencies:\n  - pip:\n      - sluice-no-such-package-anywhere==9.9.9\n"
    )
    (folder / "old-python.yml").write_text("dependencies:\n  - python=3.8\n")
    (folder / "deployment.yml").write_text(
        "name: score\nendpoint_name: env-batch\ntype: model\n"
        "code_configuration: {code: code/, scoring_script: score.py}\n"
        "environment: {conda_file: bad-env.yml}\nsettings: {mini_batch_size: 2}\n"
    )
    cli("batch-endpoint", "create", "-n", "env-batch")
    failed = cli.error("batch-deployment", "create", "-f", str(folder / "deployment.yml"))
    assert "batch deployment score of env-batch failed" in failed, failed
    assert "sluice-no-such-package-anywhere" in failed, failed
    shown = cli.json("batch-deployment", "show", "-n", "score", "-e", "env-batch")
    assert shown["provisioning_state"] == "Failed"
    table = " ".join(
        cli("batch-deployment", "show", "-n", "score", "-e", "env-batch").stdout.split()
    )
    assert "Failed" in table and "environment build failed" in table  # the message's 1st line
    assert "sluice-no-such-package-anywhere" not in table  # the installer's lines: json/yaml
    make_csvs(folder / "data", 2, 1)
    refused = cli.error("batch-endpoint", "invoke", "-n", "env-batch", "--input", "env-batch/data")
    assert "deployment 'score' failed" in refused and "batch-deployment update" in refused
    assert cli.json("batch-endpoint", "list-jobs", "-n", "env-batch") == []

    updated = cli("batch-deployment", "update", "-f", str(folder / "deployment.yml"),
                  "--set", "environment.conda_file=old-python.yml")  # fmt: skip
    assert "Updated batch deployment score of env-batch: Succeeded." in updated.stderr
    assert "conda asks for python" in updated.stderr  # the build's warning, as online
    shown = cli.json("batch-deployment", "show", "-n", "score", "-e", "env-batch")
    assert shown["provisioning_state"] == "Succeeded"
    job = cli.finished(invoke(cli, "env-batch", "env-batch/data")["name"])
    assert job["status"] == "Completed", job["status_message"]


def test_a_deployment_created_while_no_batch_service_ran_settles_when_one_starts(
    client: RegistryClient, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The batch service hears of new deployments from an ephemeral consumer: one created
    while it was down stays Creating until a batch service starts and settles it."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(SCRIPT)
    (tmp_path / "deployment.yml").write_text(
        "name: score\nendpoint_name: later-batch\ntype: model\n"
        "code_configuration: {code: code/, scoring_script: score.py}\n"
    )
    client.create_batch_endpoint(BatchEndpointSpec(name="later-batch"))
    spec = load_batch_deployment(tmp_path / "deployment.yml", client.upload).spec
    created = client.create_batch_deployment(spec, set_default=True)
    assert created.meta.provisioning_state is ProvisioningState.creating
    request.getfixturevalue("batch")  # starts the batch service
    wait_for(
        lambda: (
            client.get_batch_deployment("later-batch", "score").meta.provisioning_state
            is ProvisioningState.succeeded
        ),
        "the batch service to settle the waiting deployment",
        30,
    )


@pytest.fixture(scope="session")
def mlflow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = 2x + 1 as an MLflow sklearn model (saved in a subprocess: MLflow imports slowly)."""
    target = tmp_path_factory.mktemp("mlflow") / "model"
    code = (
        "import sys, pandas as pd, mlflow.sklearn\n"
        "from sklearn.linear_model import LinearRegression\n"
        "m = LinearRegression().fit(pd.DataFrame({'x': [1.0, 2.0, 3.0]}), [3.0, 5.0, 7.0])\n"
        "mlflow.sklearn.save_model(m, sys.argv[1], serialization_format='cloudpickle')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, timeout=300)
    return target


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.fixture
def gates() -> Iterator[Path]:
    """A folder for gate files that the workers' own users can reach (as root they run as
    the deployment's user, who cannot enter pytest's private temporary folders)."""
    with traversable_dir("sluice-gates-") as folder:
        yield folder


def test_jobs_are_in_the_lineage_of_their_model_and_data(cli: Cli, gates: Path) -> None:
    """A job's data input and its deployment's registered model list the job as a user.
    Archiving either, as on Azure, only hides it: allowed while the job runs (which still
    completes), the lineage stays, and an input naming the archived version still runs."""
    gate = gates / "gate"
    deploy(cli, "lineage-batch", env={"GATE": str(gate)})  # runs until the gate exists
    model = cli.cwd / "model"
    model.mkdir()
    (model / "weights.txt").write_text("2\n")
    cli("model", "create", "-n", "doubler", "-v", "1", "-p", str(model))
    folder = cli.cwd / "lineage-batch-score"
    (folder / "with-model.yml").write_text(
        (folder / "deployment.yml").read_text().replace("name: score", "name: with-model")
        + "model: azureml:doubler:1\n"
    )
    cli("batch-deployment", "create", "-f", str(folder / "with-model.yml"), "--set-default")
    make_csvs(cli.cwd / "data", 8, 1)
    cli("data", "create", "-n", "rows", "-v", "1", "-t", "uri_folder", "-p", str(cli.cwd / "data"))
    job = invoke(cli, "lineage-batch", "azureml:rows@latest")["name"]
    for kind, name in (("data", "rows"), ("model", "doubler")):
        shown = cli.json(kind, "show", "-n", name, "-v", "1")
        assert f"job {job}" in shown["used_by"], shown
    cli("data", "archive", "-n", "rows", "-v", "1")  # while the job reads it
    refused = cli.elsewhere("job", "download", "-n", job, "-p", "early")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert re.search(
        f"job {job} is (Queued|Running): download it once it has ended", refused.stderr
    )
    assert not (cli.cwd / "early").exists()
    gate.touch()
    done = cli.finished(job)
    assert done["status"] == "Completed", done["status_message"]
    archived = cli.json("data", "show", "-n", "rows", "-v", "1")
    assert archived["archived"] is True
    assert archived["used_by"] == [f"job {job}"]  # an ended job stays in the lineage
    cli("model", "archive", "-n", "doubler", "-v", "1")
    shown = cli.json("model", "show", "-n", "doubler", "-v", "1")
    assert "lineage-batch/with-model" in shown["used_by"]  # the deployment keeps it
    again = invoke(cli, "lineage-batch", "azureml:rows:1")["name"]  # archived, named
    done = cli.finished(again)
    assert done["status"] == "Completed", done["status_message"]


# Reads each input's value, then tries a file its uid may read but its sandbox does not name.
PROBE_SCRIPT = """\
import os


def init():
    pass


def run(mini_batch):
    rows = []
    for path in mini_batch:
        value = open(path).read().split()[1]
        try:
            with open(os.environ["PROBE"]) as probe:
                seen = probe.read().strip()
        except PermissionError:
            seen = "refused"
        rows.append(f"{os.path.basename(path)},{value},{seen}")
    return rows
"""


def test_landlocked_workers_score_their_files_and_reach_nothing_else(
    start_service: ServiceStarter,
    registry: RunningService,
    tmp_path: Path,
    in_process: InProcessCli,
) -> None:
    """SLUICE_LANDLOCK (compose and Kubernetes, where workers share the batch
    service's uid): workers start cold in a Landlock sandbox (confine.py) that reads the
    job's inputs and writes its parts, and refuses a file every user may read."""
    start_service.settings = start_service.settings.model_copy(
        update={"registry_address": registry.address, "landlock": True}
    )
    cli = cli_for(start_service("batch"), registry, tmp_path, in_process)
    with traversable_dir("sluice-probe-") as folder:
        probe = folder / "readable-by-all.txt"
        probe.write_text("outside the sandbox\n")
        probe.chmod(0o644)  # the control: any uid reaches and reads it
        deploy(cli, "landlocked", script=PROBE_SCRIPT, env={"PROBE": str(probe)})
        expected = make_csvs(cli.cwd / "data", 3, 1)
        job = cli.finished(invoke(cli, "landlocked", cli.cwd / "data")["name"])
    assert job["status"] == "Completed", job["status_message"]
    assert output_lines(job) == [line.rsplit(",", 1)[0] + ",refused" for line in expected]
    logs = cli("job", "stream", "-n", job["name"]).stdout
    assert "confined with Landlock" in logs and "started cold" in logs
    assert "from a warm spare" not in logs
