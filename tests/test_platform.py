"""`sluice up` / `status` / `down` through the real CLI, with real child processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from cryptography import x509

from sluice.common.pki import ALS_SERVER, XDS_SERVER, PlatformPki, expires_soon
from sluice.common.platform import GATEWAY_NODE
from sluice.common.supervisor import (
    ProcessSpec,
    RunningProcess,
    Supervisor,
    free_port,
    stop_process,
)
from sluice.testing.wait import wait_for
from sluice.traffic.tls import GATEWAY_KEY, ensure_local_certificate

# Each test runs `sluice up` (and `down`) once or twice: a minute each on a loaded 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

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
    assert "Portal: http://127.0.0.1:" in up.stderr  # the management listener's URL

    status = run_cli(state, "status", "-o", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Portal: http://127.0.0.1:" in status.stderr
    assert {row["state"] for row in json.loads(status.stdout)} == {"healthy"}

    # Every service serves its own Prometheus /metrics, counting its gRPC calls (health
    # checks included) by method and code.
    scrape = json.loads((state / "platform.json").read_text())["prometheus"]
    assert {"registry", "provisioner", "traffic", "metrics"} <= scrape.keys()
    for name, url in scrape.items():
        with urllib.request.urlopen(url, timeout=10) as page:  # noqa: S310 - loopback http
            text = page.read().decode()
        assert 'sluice_grpc_server_handled_total{code="OK",method="/grpc.health.v1' in text, name

    # Envoy's stats sink streams to the metrics service (mutual TLS, every 5 s): it is up
    # there, by its node id and address.
    def envoy_heard() -> bool:
        with urllib.request.urlopen(scrape["metrics"], timeout=10) as page:  # noqa: S310
            return 'sluice_envoy_up{envoy="sluice-gateway@127.0.0.1"} 1.0' in page.read().decode()

    wait_for(envoy_heard, "Envoy's stats at the metrics service", deadline=30)

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
    assert "No platform runs" in stopped.stderr


def gateway_certificate(port: int) -> x509.Certificate | None:
    """The certificate Envoy's TLS listener serves (what SDS gave it), or None yet."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="x.sluice.localhost") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return x509.load_der_x509_certificate(der) if der else None


def test_data_survives_down_and_up_and_expiring_certificates_are_renewed(state: Path) -> None:
    from pymongo import MongoClient

    assert run_cli(state, "up").returncode == 0
    uri = json.loads((state / "platform.json").read_text())["mongodb_uri"]
    with MongoClient(uri) as client:
        client.sluice.probe.insert_one({"kept": True})
    assert run_cli(state, "down").returncode == 0
    # Every certificate a day from its end: the platform CA's leaves (Envoy's xDS and stats
    # client, the xDS and access-log servers) and the gateway's own; `up` renews them all,
    # from the same CAs, and the components use the new ones.
    pki = PlatformPki(state / "pki")
    leaves = [
        pki.issue(GATEWAY_NODE, server=False, validity=timedelta(days=1)),
        pki.issue(XDS_SERVER, server=True, validity=timedelta(days=1)),
        pki.issue(ALS_SERVER, server=True, validity=timedelta(days=1)),
    ]
    (state / "tls" / GATEWAY_KEY).unlink()
    ensure_local_certificate(state / "tls", "sluice.localhost", timedelta(days=1))
    assert all(expires_soon(leaf.cert) for leaf in leaves)
    https_port = free_port()  # known, to see the certificate the gateway serves
    env = {"SLUICE_ENVOY__HTTPS_PORT": str(https_port), "SLUICE_CERT_CHECK_INTERVAL_S": "1"}
    assert run_cli(state, "up", env=env).returncode == 0
    doc = json.loads((state / "platform.json").read_text())
    with MongoClient(doc["mongodb_uri"]) as client:
        assert client.sluice.probe.find_one({}, {"_id": 0}) == {"kept": True}
    assert not any(expires_soon(leaf.cert) for leaf in leaves)

    # Envoy's stats reach the metrics service over mutual TLS with the renewed leaves.
    def envoy_heard() -> bool:
        with urllib.request.urlopen(doc["prometheus"]["metrics"], timeout=10) as page:  # noqa: S310
            return 'sluice_envoy_up{envoy="sluice-gateway@127.0.0.1"} 1.0' in page.read().decode()

    wait_for(envoy_heard, "Envoy's stats at the metrics service", deadline=30)
    # The gateway serves its renewed certificate (over SDS).
    served = wait_for(
        lambda: gateway_certificate(https_port),
        "Envoy's TLS listener",
        deadline=30,
    )
    assert served.not_valid_after_utc - datetime.now(UTC) > timedelta(days=800)

    # While it runs: the watchdog renews leaves near their end and restarts their holders.
    def pids() -> dict[str, int]:
        processes = json.loads((state / "platform.json").read_text())["processes"]
        return {p["name"]: p["pid"] for p in processes}

    before = pids()
    expiring = [
        pki.issue(GATEWAY_NODE, server=False, validity=timedelta(days=1)),
        pki.issue(XDS_SERVER, server=True, validity=timedelta(days=1)),
    ]
    wait_for(
        lambda: (
            not any(expires_soon(leaf.cert) for leaf in expiring)
            and {n: p for n, p in pids().items() if p != before[n]}.keys() == {"envoy", "traffic"}
        ),
        "the watchdog to renew Envoy's and the xDS server's certificates and restart both",
        deadline=60,
    )
    # The restarted Envoy got its listeners over mutual TLS with the renewed pair.
    wait_for(lambda: gateway_certificate(https_port), "Envoy's TLS listener again", deadline=60)


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
    assert [p for p in _children_named(("nats-server", "embedded_mongo", "envoy"), state)] == []


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
    assert [p for p in _children_named(("nats-server", "embedded_mongo", "envoy"), state)] == []


def _children_named(names: tuple[str, ...], state: Path) -> list[int]:
    """Processes of ours still running with this state dir on their command line."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(state) in cmd and any(n in cmd for n in names):
            found.append(proc.info["pid"])
    return found


def _record(state: Path) -> dict[str, dict[str, object]]:
    doc = json.loads((state / "platform.json").read_text())
    return {p["name"]: p for p in doc["processes"]} | {"supervisor": doc["supervisor"]}


def test_supervisor_restarts_only_what_died_and_up_starts_only_what_is_missing(
    state: Path,
) -> None:
    assert run_cli(state, "up").returncode == 0
    before = _record(state)
    os.kill(int(before["traffic"]["pid"]), signal.SIGKILL)  # type: ignore[call-overload]

    def traffic_back() -> bool:
        now = _record(state)["traffic"]
        return now["pid"] != before["traffic"]["pid"] and alive(int(now["pid"]))  # type: ignore[call-overload]

    wait_for(traffic_back, "the supervisor to restart traffic")
    status = run_cli(state, "status", "-o", "json")
    rows = {row["component"]: row for row in json.loads(status.stdout)}
    assert status.returncode == 0, status.stderr
    # One restart, or more if an attempt failed (a start-up past its deadline on a loaded host).
    assert rows["traffic"]["restarts"] >= 1, (state / "logs" / "supervisor.log").read_text()
    after = _record(state)
    unchanged = {name for name in before if name != "traffic"}
    assert {n: after[n]["pid"] for n in unchanged} == {n: before[n]["pid"] for n in unchanged}

    # The supervisor itself is gone and so is the registry: status says so and how to recover.
    os.kill(int(after["supervisor"]["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    os.kill(int(after["registry"]["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    wait_for(lambda: not alive(int(after["registry"]["pid"])), "the registry to die")  # type: ignore[call-overload]
    broken = run_cli(state, "status")
    assert broken.returncode == 1
    assert "registry is down" in broken.stderr
    assert "the supervisor is not running" in broken.stderr
    assert "Run `sluice up`" in broken.stderr

    again = run_cli(state, "up")
    assert again.returncode == 0, again.stderr
    assert "Started what was missing: registry." in again.stderr
    final = _record(state)
    kept = unchanged - {"registry", "supervisor"}
    assert {n: final[n]["pid"] for n in kept} == {n: after[n]["pid"] for n in kept}
    assert run_cli(state, "status").returncode == 0


def test_crash_loop_is_reported(state: Path, tmp_path: Path) -> None:
    """A component that dies at every start: back-off, then `crash-looping` in status."""
    from sluice.common.platform import ComponentSpec, LocalPlatform, PlatformState
    from sluice.common.settings import Settings
    from sluice.common.supervisor import RunningProcess

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    platform = LocalPlatform(Settings(state_dir=state))
    state.mkdir(parents=True)
    platform.save_state(
        PlatformState(
            started_at=datetime.now(UTC),
            state_dir=state,
            nats_url="nats://127.0.0.1:1",
            mongodb_uri="mongodb://127.0.0.1:1",
            registry_address=None,
            envoy_http_port=None,
            envoy_https_port=None,
            envoy_admin_port=1,
            domain="sluice.localhost",
            processes=[
                RunningProcess(
                    name="flaky", pid=int(dead.stdout), create_time=0, log_path=tmp_path / "f.log"
                )
            ],
            components=[
                ComponentSpec(
                    name="flaky",
                    argv=[sys.executable, "-c", "raise SystemExit(3)"],
                    probe="tcp://127.0.0.1:1",
                )
            ],
        )
    )
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "sluice.common.supervise"],
        env={**os.environ, "SLUICE_STATE_DIR": str(state)},
    )
    try:
        wait_for(
            lambda: _record(state)["flaky"]["failures"] >= 5,  # type: ignore[operator]
            "five deaths in a row",
            deadline=30,
        )
        status = run_cli(state, "status")
        assert status.returncode == 1
        assert "flaky is crash-looping" in status.stderr
        assert "exited with code 3 during start-up" in status.stderr
        assert "a crash loop needs its log read first" in status.stderr
        assert _record(state)["flaky"]["restarts"] >= 4  # type: ignore[operator]
    finally:
        watchdog.terminate()
        watchdog.wait(timeout=30)


def _leader_with_a_child(tmp_path: Path, name: str) -> tuple[RunningProcess, int]:
    """A process (like the provisioner) that started a child in its group (an instance)."""
    pid_file = tmp_path / f"{name}.pid"
    leader_code = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); "
        "time.sleep(600)"
    )
    supervisor = Supervisor(tmp_path / "logs")
    spec = ProcessSpec(
        name=name, argv=[sys.executable, "-c", leader_code], health=_FileCheck(pid_file)
    )
    return supervisor.start(spec), int(pid_file.read_text())


def _kill_leader(leader: RunningProcess) -> None:
    os.kill(leader.pid, signal.SIGKILL)
    wait_for(lambda: not alive(leader.pid) or _reaped(leader.pid), "the leader to die")


def test_stop_reaches_the_group_of_a_dead_leader(tmp_path: Path) -> None:
    """`sluice down` after a provisioner kill -9 still stops the instances it left in its group."""
    leader, child = _leader_with_a_child(tmp_path, "leader")
    _kill_leader(leader)
    assert alive(child)
    stop_process(leader)
    assert not alive(child)


def test_stopping_a_successor_stops_what_its_dead_predecessor_left(tmp_path: Path) -> None:
    """The watchdog restarts a killed provisioner, which adopts the instances left in the dead
    one's group; stopping the new one (`sluice down`) stops those too, even once it died too."""
    first, first_child = _leader_with_a_child(tmp_path, "first")
    _kill_leader(first)
    second, second_child = _leader_with_a_child(tmp_path, "second")
    second = first.successor(second)
    assert second.earlier_groups == [(first.pid, first.create_time)]
    assert alive(first_child)  # the restart stopped nothing
    _kill_leader(second)
    third, third_child = _leader_with_a_child(tmp_path, "third")
    third = second.successor(third)
    assert len(third.earlier_groups) == 2
    stop_process(third)
    assert not any(alive(pid) for pid in (first_child, second_child, third_child))
    # A group left empty is not inherited.
    fourth, _ = _leader_with_a_child(tmp_path, "fourth")
    assert third.successor(fourth).earlier_groups == []
    stop_process(fourth)


def _reaped(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return not alive(pid)


class _FileCheck:
    def __init__(self, path: Path):
        self.path = path

    def __call__(self) -> bool:
        return self.path.exists() and self.path.read_text() != ""

    def describe(self) -> str:
        return f"file://{self.path}"
