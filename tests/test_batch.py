"""The batch service as a real process: jobs through the work queue, end to end.

Real nats-server, SecantusDB, registry and batch service; workers are real
processes running real scoring scripts over small CSV folders.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sluice.common.testing.plugin import RunningService, ServiceStarter
from sluice.sdk.batch import BatchClient, state_name
from sluice.sdk.client import RegistryClient
from sluice.sdk.specs import load_batch_deployment, load_batch_endpoint

pytestmark = pytest.mark.integration

SCRIPT = """\
import os
import time

import pandas as pd


def init():
    global factor
    factor = float(os.environ.get("FACTOR", "2"))


def run(mini_batch):
    rows = []
    for path in mini_batch:
        name = os.path.basename(path)
        if name.startswith("bad"):
            raise ValueError(f"cannot score {name}")
        delay = float(os.environ.get("DELAY_S", "0"))
        if delay:
            time.sleep(delay)
        frame = pd.read_csv(path)
        for x in frame["x"]:
            rows.append(f"{name},{x},{x * factor}")
    return rows
"""


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def batch(start_service: ServiceStarter, registry: RunningService) -> RunningService:
    del registry
    return start_service("batch")


@pytest.fixture
def jobs(batch: RunningService) -> Iterator[BatchClient]:
    assert batch.settings.admin_token
    with BatchClient(batch.address, batch.settings.admin_token, actor="tester") as c:
        yield c


def make_csvs(
    folder: Path, files: int, rows: int, bad: tuple[int, ...] = (), prefix: str = "f"
) -> list[str]:
    """CSV files <prefix>000.csv... with column x; returns the expected output lines in order."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = []
    for i in range(files):
        name = f"{'bad' if i in bad else prefix}{i:03d}.csv"
        values = [(ord(prefix[0]) * 100 + i) * 1000 + r for r in range(rows)]
        (folder / name).write_text("x\n" + "".join(f"{v}\n" for v in values))
        if i not in bad:
            expected.extend(f"{name},{v},{v * 2.0}" for v in values)
    return expected


def deploy(client: RegistryClient, tmp: Path, endpoint: str, settings: str = "") -> None:
    code = tmp / "code"
    code.mkdir(exist_ok=True)
    (code / "score.py").write_text(SCRIPT)
    (tmp / "endpoint.yml").write_text(f"name: {endpoint}\n")
    (tmp / "deployment.yml").write_text(
        f"name: dep1\nendpoint_name: {endpoint}\ntype: model\n"
        "code_configuration: {code: code/, scoring_script: score.py}\n"
        "resources: {instance_count: 1}\n"
        f"settings:\n  mini_batch_size: 2\n  max_concurrency_per_instance: 2\n{settings}"
    )
    client.create_batch_endpoint(load_batch_endpoint(tmp / "endpoint.yml").spec)
    spec = load_batch_deployment(tmp / "deployment.yml", client.upload).spec
    client.create_batch_deployment(spec, set_default=True)


def finished(jobs: BatchClient, name: str, timeout: float = 90) -> Any:
    return wait_for(
        lambda: (
            (j := jobs.get(name)) and state_name(j) in {"Completed", "Failed", "Canceled"} and j
        ),
        timeout,
        f"job {name} to end",
    )


def test_folder_of_csvs_every_row_once_in_order(
    client: RegistryClient, jobs: BatchClient, tmp_path: Path
) -> None:
    deploy(client, tmp_path, "csv-batch")
    # Sorted by relative path: g000.csv, g001.csv, then sub/f000.csv ... sub/f004.csv.
    expected = make_csvs(tmp_path / "data", 2, 2, prefix="g")
    expected += make_csvs(tmp_path / "data" / "sub", 5, 3)
    job = jobs.invoke("csv-batch", input=str(tmp_path / "data"))
    assert state_name(job) == "Queued"
    assert job.progress.mini_batches_total == 4 and job.progress.files_total == 7
    done = finished(jobs, job.name)
    assert state_name(done) == "Completed", done.status_message
    out = Path(done.output_path) / "predictions.csv"
    assert out.read_text().splitlines() == expected
    assert done.progress.mini_batches_done == 4 and done.progress.files_succeeded == 7
    assert done.cost.worker_seconds > 0 and done.cost.cost > 0
