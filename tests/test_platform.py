"""`sluice up` / `status` / `down` through the real CLI, with real child processes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration

SLUICE = [sys.executable, "-m", "sluice.sdk.cli"]


def run_cli(
    state: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "SLUICE_STATE_DIR": str(state),
        # Free ports for everything, so tests never collide with a running platform.
        "SLUICE_ENVOY__HTTP_PORT": "0",
        "SLUICE_ENVOY__HTTPS_PORT": "0",
        "SLUICE_PORTS__REGISTRY": "0",
        "NO_COLOR": "1",
        "COLUMNS": "200",
        **(env or {}),
    }
    return subprocess.run(
        [*SLUICE, *args], capture_output=True, text=True, env=full_env, timeout=180, check=False
    )


def platform_pids(state: Path) -> set[int]:
    """Every process the platform runs: the recorded children and their descendants."""
    doc = json.loads((state / "platform.json").read_text())
    pids: set[int] = set()
    for proc in doc["processes"]:
        pids.add(proc["pid"])
        with contextlib.suppress(psutil.NoSuchProcess):
            pids.update(c.pid for c in psutil.Process(proc["pid"]).children(recursive=True))
    return pids


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    run_cli(state, "down")  # never leave a platform behind, whatever the test did


def test_up_status_up_again_down(state: Path) -> None:
    up = run_cli(state, "up", "-o", "json")
    assert up.returncode == 0, up.stderr
    components = {row["component"]: row for row in json.loads(up.stdout)}
    assert {"nats", "mongodb", "envoy"} <= components.keys()
    assert components["mongodb"]["address"].startswith("mongodb://127.0.0.1:")
    assert "Platform up in" in up.stderr

    status = run_cli(state, "status", "-o", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert {row["state"] for row in json.loads(status.stdout)} == {"healthy"}

    # Every service serves its own Prometheus /metrics, counting its gRPC calls (health
    # checks included) by method and code.
    scrape = json.loads((state / "platform.json").read_text())["prometheus"]
    assert {"registry", "provisioner", "traffic", "metrics"} <= scrape.keys()
    for name, url in scrape.items():
        with urllib.request.urlopen(url, timeout=10) as page:  # noqa: S310 - loopback http
            text = page.read().decode()
        assert 'sluice_grpc_server_handled_total{code="OK",method="/grpc.health.v1' in text, name

    again = run_cli(state, "up", "-o", "json")
    assert again.returncode == 0
    assert "already running" in again.stderr
    assert json.loads(again.stdout) == json.loads(up.stdout)

    pids = platform_pids(state)
    assert len(pids) >= 3 and all(alive(p) for p in pids)
    down = run_cli(state, "down")
    assert down.returncode == 0
    assert down.stdout.startswith("Stopped nats, mongodb")
    assert [p for p in pids if alive(p)] == []
    assert (state / "data" / "mongodb").is_dir()  # data is kept

    stopped = run_cli(state, "status")
    assert stopped.returncode == 3
    assert "not running" in stopped.stderr


def test_data_survives_down_and_up(state: Path) -> None:
    from pymongo import MongoClient

    assert run_cli(state, "up").returncode == 0
    uri = json.loads((state / "platform.json").read_text())["mongodb_uri"]
    with MongoClient(uri) as client:
        client.sluice.probe.insert_one({"kept": True})
    assert run_cli(state, "down").returncode == 0
    assert run_cli(state, "up").returncode == 0
    uri = json.loads((state / "platform.json").read_text())["mongodb_uri"]
    with MongoClient(uri) as client:
        assert client.sluice.probe.find_one({}, {"_id": 0}) == {"kept": True}


def test_taken_port_is_one_line_naming_the_component_and_nothing_runs(state: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(state, "up", env={"SLUICE_ENVOY__HTTP_PORT": str(port)})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"error: envoy: port 127.0.0.1:{port} is already in use"
    assert "Traceback" not in result.stderr
    assert not (state / "platform.json").exists()
    assert [p for p in _children_named(("nats-server", "secantusd", "envoy"), state)] == []


def test_child_dying_at_start_up_names_its_log_and_nothing_runs(state: Path) -> None:
    (state / "data").mkdir(parents=True)
    (state / "data" / "nats").write_text("a file where nats wants its store folder")
    result = run_cli(state, "up")
    assert result.returncode == 1
    log = state / "logs" / "nats.log"
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: nats: exited with code 1 during start-up (see {log})"
    )
    assert log.exists()
    assert not (state / "platform.json").exists()
    assert [p for p in _children_named(("nats-server", "secantusd", "envoy"), state)] == []


def _children_named(names: tuple[str, ...], state: Path) -> list[int]:
    """Processes of ours still running with this state dir on their command line."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(state) in cmd and any(n in cmd for n in names):
            found.append(proc.info["pid"])
    return found
