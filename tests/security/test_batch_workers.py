"""Batch workers run a deployment's scoring code: what that code can see of the platform.

A batch job on the real platform whose `run()` reports, for each file, what the
worker process holds: its NATS user (the job's own, not a service's: test_nats_permissions)
and whether any of the platform's secrets is in its environment. A second job runs
the online attacker's search (attacker/score.py) from `run()`: the state directory,
its secrets, the runner's folder, other processes' environments.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from sluice.common.isolation import user_name
from sluice.common.mongo_auth import MongoUser
from sluice.common.nats_auth import FOLDER, JOB_USERS, job_user
from sluice.common.platform import LocalPlatform, PlatformState
from sluice.common.settings import Settings
from sluice.sdk.batch import TERMINAL, BatchClient, job_view, state_name, upload_input
from sluice.sdk.client import RegistryClient
from sluice.sdk.specs import load_batch_deployment, load_batch_endpoint
from sluice.testing.wait import wait_for

from .conftest import refused_to_services

pytestmark = pytest.mark.integration
NOT_ROOT = (
    "run as another user than root, the platform cannot switch users: deployments run "
    "as its user and their code can read its files (docs/security.md; "
    "SLUICE_LANDLOCK=true confines them)"
)

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
        "job": worker.get("job"),
        "secrets": sorted(
            k for k in ("SLUICE_ADMIN_TOKEN", "SLUICE_SECRET_KEY", "SLUICE_MONGODB_URI",
                        "SLUICE_NATS_URL") if os.environ.get(k)
        ),
        "uid": os.getuid(),
    }
    return [json.dumps(report, sort_keys=True) for _ in mini_batch]
"""


ATTACK = """\
import json

import attacker


def init():
    pass


def run(mini_batch):
    return [json.dumps(attacker.run(None), sort_keys=True) for _ in mini_batch]
"""


def runs_as(uid: int) -> bool:
    """Whether any process runs as `uid`."""
    return any(
        p.info["uids"] is not None and p.info["uids"].real == uid
        for p in psutil.process_iter(["uids"])
    )


def run_job(
    state: PlatformState,
    folder: Path,
    script: str = SCRIPT,
    endpoint: str = "sec-batch",
    variables: dict[str, str] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "score.py").write_text(script)
    shutil.copy(Path(__file__).parent / "attacker" / "score.py", folder / "code" / "attacker.py")
    (folder / "data").mkdir()
    for i in range(2):
        (folder / "data" / f"f{i}.txt").write_text("x\n")
    (folder / "endpoint.yml").write_text(f"name: {endpoint}\n")
    (folder / "deployment.yml").write_text(
        yaml.safe_dump(
            {
                "name": "probe",
                "endpoint_name": endpoint,
                "type": "model",
                "code_configuration": {"code": "code/", "scoring_script": "score.py"},
                "environment_variables": variables or {},
                "resources": {"instance_count": 1},
                "settings": {"mini_batch_size": 1, "max_concurrency_per_instance": 2},
            }
        )
    )
    settings = Settings(state_dir=state.state_dir)
    with RegistryClient.connect(settings) as registry:
        registry.create_batch_endpoint(load_batch_endpoint(folder / "endpoint.yml").spec)
        spec = load_batch_deployment(folder / "deployment.yml", registry.upload).spec
        registry.create_batch_deployment(spec, set_default=True)
        data = upload_input(registry, folder / "data")
    with BatchClient.connect(settings) as batch:
        job = batch.invoke(endpoint, input="data", input_artifact=data)
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
        # NATS as the job's own user, which reaches nothing but its job (test_nats_permissions)
        assert report["job"] == job.name
        assert report["nats_user"] == job_user(job.name)
        # A minimal environment: none of the platform's secrets or its services' NATS URL.
        assert report["secrets"] == []
        if os.geteuid() == 0:  # the platform can switch users: the deployment's own, not root
            assert pwd.getpwuid(report["uid"]).pw_name == user_name("batch:sec-batch", "probe")
    # The job ended: its user is gone from nats-server's configuration.
    job_users = local_platform.state_dir / FOLDER / JOB_USERS
    assert job_user(job.name) not in job_users.read_text()
    # The batch service ran the job within its own NATS permissions.
    assert refused_to_services(local_platform) == []
    if os.geteuid() != 0:
        return
    # Deleting the deployment removes what it left: its warm spares, their folder, its user.
    user = user_name("batch:sec-batch", "probe")
    uid = pwd.getpwnam(user).pw_uid
    spares = local_platform.state_dir / "batch-workspaces" / "spares" / user
    wait_for(
        lambda: spares.exists() and runs_as(uid),
        "the deployment's spares to wait, as its user",
        deadline=60,
    )
    with RegistryClient.connect(Settings(state_dir=local_platform.state_dir)) as registry:
        registry.delete_batch_deployment("sec-batch", "probe")

    def gone() -> bool:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return not spares.exists() and not runs_as(uid)
        return False

    wait_for(gone, "the deleted deployment's spares, folder and user to go", deadline=30)


def test_batch_deployment_code_finds_no_platform_secret(
    local_platform: PlatformState, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    state = local_platform.state_dir
    platform = LocalPlatform(Settings(state_dir=state))
    passwords = json.loads((state / FOLDER / "passwords.json").read_text())
    secrets = {
        "admin token": platform.admin_token(),
        "Fernet key": platform.secret_key(),
        "platform CA key": (state / "pki" / "ca.key").read_text().splitlines()[1],
        "gateway CA key": (state / "tls" / "ca.key").read_text().splitlines()[1],
        "Mongo password": MongoUser(state).password(),
        # The workers' own NATS password is their job's (in their configuration); no other.
        **{f"NATS password of {u}": p for u, p in passwords.items()},
    }
    variables = {"PROBE_STATE_DIR": str(state), "PROBE_VICTIM_WORKSPACE": str(state / "jobs")}
    folder = tmp_path_factory.mktemp("sec-batch-attack")
    job, reports = run_job(local_platform, folder, ATTACK, "sec-batch-attack", variables)
    assert state_name(job) == "Completed", job_view(job).get("status_message")
    assert len(reports) == 2
    for found in reports:
        assert {n for n in found["env"] if n.startswith("SLUICE_")} == {"SLUICE_BATCH_WORKER"}
        if os.geteuid() != 0:
            continue  # as another user workers share the platform's: only the environment
        text = json.dumps(found)
        leaked = [name for name, value in secrets.items() if value in text]
        assert not leaked, f"run() found: {leaked}"
        # Nothing under the state dir can be listed or read, nor the runner's jobs folder.
        readable = {p: v for p, v in found["files"].items() if v not in ("denied", "missing")}
        assert not readable, readable
        for path in (
            state,
            state / "admin-token",
            state / "secret.key",
            state / "tls" / "ca.key",
            state / "pki",
            state / "pki" / "ca.key",
            state / FOLDER,
            state / FOLDER / "passwords.json",
            state / "mongo-auth",
            state / "mongo-auth" / "password",
            state / "jobs",
        ):
            assert found["files"][str(path)] == "denied", path
        assert found["envoy_admin"] == "denied"
        assert pwd.getpwuid(found["uid"]).pw_name == user_name("batch:sec-batch-attack", "probe")
