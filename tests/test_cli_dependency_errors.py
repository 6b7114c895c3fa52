"""A dependency down is one line saying what is down and what to do (issue 10, item 4).

Real registry, real SecantusDB and the CLI as a user runs it; "down" is a
stopped server (Mongo) or an address nothing listens on (NATS).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.common.components import mongo_spec
from sluice.common.platform import PlatformState
from sluice.common.settings import Settings
from sluice.common.supervisor import Supervisor, free_port, stop_process
from sluice.testing.plugin import ServiceStarter

# Each CLI call is a new Python process, and the database-down case waits out server selection.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def cli(
    state_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluice.sdk.cli", *args],
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
            "SLUICE_STATE_DIR": str(state_dir),
            "NO_COLOR": "1",
            "COLUMNS": "300",
            **(env or {}),
        },
        timeout=120,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def traffic_of(state_dir: Path, endpoint: str) -> dict[str, int]:
    shown = cli(state_dir, "online-endpoint", "show", "-n", endpoint, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    return {k: v for k, v in json.loads(shown.stdout)["traffic"].items() if v}


@pytest.fixture
def endpoint(local_platform: PlatformState, test_id: str) -> str:
    name = f"dep-{test_id}"
    made = cli(local_platform.state_dir, "online-endpoint", "create", "-n", name)
    assert made.returncode == 0, made.stderr
    return name


def test_nats_down_traffic_update_is_one_line_and_changes_nothing(
    local_platform: PlatformState, endpoint: str, tmp_path: Path
) -> None:
    # The same platform, as seen by a CLI for which NATS is down: nothing listens there.
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    shutil.copy(local_platform.state_dir / "admin-token", state_dir / "admin-token")
    dead_nats = local_platform.model_copy(update={"nats_url": f"nats://127.0.0.1:{free_port()}"})
    (state_dir / "platform.json").write_text(dead_nats.model_dump_json())

    result = cli(state_dir, "online-endpoint", "update", "-n", endpoint, "--traffic", "x=0")
    line = one_error_line(result)
    assert "NATS, the platform's event bus, is not reachable" in line
    assert "nothing was changed" in line and "sluice status" in line and "--no-wait" in line
    assert traffic_of(local_platform.state_dir, endpoint) == {}


def test_duplicate_deployment_in_traffic_is_refused_and_changes_nothing(
    local_platform: PlatformState, endpoint: str
) -> None:
    result = cli(local_platform.state_dir, "online-endpoint", "update", "-n", endpoint,
                 "--traffic", "blue=100 green=0 blue=0")  # fmt: skip
    line = one_error_line(result)
    assert line == (
        "error: --traffic names 'blue' twice ('blue=100 green=0 blue=0'): give each "
        "deployment one share; nothing was changed"
    )
    assert traffic_of(local_platform.state_dir, endpoint) == {}


def test_database_down_is_one_line(
    sluice_settings: Settings, supervisor: Supervisor, tmp_path: Path
) -> None:
    mongo = supervisor.start(mongo_spec(host="127.0.0.1", port=free_port(), data_dir=None))
    # (a short server selection: each command below waits for it before its error)
    uri = f"{mongo.address}&serverSelectionTimeoutMS=1500"
    settings = sluice_settings.model_copy(update={"mongodb_uri": uri})
    registry = ServiceStarter(settings, supervisor)("registry")
    env = {
        "SLUICE_REGISTRY_ADDRESS": registry.address,
        "SLUICE_ADMIN_TOKEN": settings.admin_token or "",
    }
    assert cli(tmp_path, "online-endpoint", "list", env=env).returncode == 0
    stop_process(mongo)

    for command in (["online-endpoint", "list"], ["online-endpoint", "create", "-n", "db-down"]):
        line = one_error_line(cli(tmp_path, *command, env=env))
        assert line == (
            "error: the platform's database (MongoDB-compatible server) is not reachable; "
            "nothing was changed. Check `sluice status` (the supervisor restarts it) and retry"
        )
    # The read (list) reached the registry once, though the CLI retries reads that find a
    # service unavailable: the registry's answer asks for no retry (it already waited).
    assert registry.process.log_path.read_text().count("database_unreachable") == 2
