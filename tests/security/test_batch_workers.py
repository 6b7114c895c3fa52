"""Batch workers run a deployment's scoring code: what that code can see of the platform.

A batch job on the real platform whose `run()` reports, for each file, what the
worker process holds: its NATS user (the restricted `batch-worker`, not a service's)
and whether any of the platform's secrets is in its environment.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice.common.nats_auth import WORKER_USER
from sluice.common.platform import PlatformState
from sluice.common.settings import Settings
from sluice.sdk.batch import TERMINAL, BatchClient, job_view, state_name
from sluice.sdk.client import RegistryClient
from sluice.sdk.specs import load_batch_deployment, load_batch_endpoint

pytestmark = pytest.mark.integration

SCRIPT = """\
import json
import os
from urllib.parse import urlsplit


def init():
    pass


def run(mini_batch):
    worker = json.loads(os.environ.get("SLUICE_BATCH_WORKER", "{}"))
    report = {
        "nats_user": urlsplit(worker.get("nats_url", "")).username,
        "secrets": sorted(
            k for k in ("SLUICE_ADMIN_TOKEN", "SLUICE_SECRET_KEY", "SLUICE_MONGODB_URI",
                        "SLUICE_NATS_URL") if os.environ.get(k)
        ),
        "uid": os.getuid(),
    }
    return [json.dumps(report, sort_keys=True) for _ in mini_batch]
"""


def run_job(state: PlatformState, folder: Path) -> tuple[Any, list[dict[str, Any]]]:
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "score.py").write_text(SCRIPT)
    (folder / "data").mkdir()
    for i in range(2):
        (folder / "data" / f"f{i}.txt").write_text("x\n")
    (folder / "endpoint.yml").write_text("name: sec-batch\n")
    (folder / "deployment.yml").write_text(
        yaml.safe_dump(
            {
                "name": "probe",
                "endpoint_name": "sec-batch",
                "type": "model",
                "code_configuration": {"code": "code/", "scoring_script": "score.py"},
                "resources": {"instance_count": 1},
                "settings": {"mini_batch_size": 1, "max_concurrency_per_instance": 1},
            }
        )
    )
    settings = Settings(state_dir=state.state_dir)
    with RegistryClient.connect(settings) as registry:
        registry.create_batch_endpoint(load_batch_endpoint(folder / "endpoint.yml").spec)
        spec = load_batch_deployment(folder / "deployment.yml", registry.upload).spec
        registry.create_batch_deployment(spec, set_default=True)
    with BatchClient.connect(settings) as batch:
        job = batch.invoke("sec-batch", input=str(folder / "data"))
        deadline = time.monotonic() + 240
        while state_name(job) not in TERMINAL:
            assert time.monotonic() < deadline, f"job still {state_name(job)}"
            time.sleep(0.2)
            job = batch.get(job.name)
    view = job_view(job)
    lines = (Path(view["output_path"]) / view["output_file_name"]).read_text().splitlines()
    return job, [json.loads(line) for line in lines]


def test_batch_workers_hold_no_platform_secret(
    local_platform: PlatformState, tmp_path_factory: pytest.TempPathFactory
) -> None:
    job, reports = run_job(local_platform, tmp_path_factory.mktemp("sec-batch"))
    assert state_name(job) == "Completed", job_view(job).get("status_message")
    assert len(reports) == 2
    for report in reports:
        # NATS as the restricted workers' user (which cannot forge events: test_internal_doors).
        assert report["nats_user"] == WORKER_USER
        # A minimal environment: none of the platform's secrets or its services' NATS URL.
        assert report["secrets"] == []
