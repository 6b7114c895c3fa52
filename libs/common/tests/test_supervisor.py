"""The supervisor against real child processes: start, health, failure cases, stop."""

from __future__ import annotations

import dataclasses
import os
import resource
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from sluice.common import supervisor
from sluice.common.health import TcpCheck
from sluice.common.supervisor import (
    ComponentError,
    ProcessSpec,
    RunningProcess,
    Supervisor,
    free_port,
    is_alive,
    stop_process,
)
from sluice.testing.wait import wait_for

OTHER_RUN = (
    "from sluice.common.supervisor import free_port; print(*(free_port() for _ in range(300)))"
)

# A tiny TCP server: the stand-in child process for these tests (not one of our components).
SERVER = textwrap.dedent(
    """
    import os, socket, subprocess, sys, time
    port = int(sys.argv[1])
    if len(sys.argv) > 2 and sys.argv[2] == "spawn":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("grandchild", child.pid, flush=True)
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen()
    print("listening", port, flush=True)
    while True:
        conn, _ = s.accept(); conn.close()
    """
)


@pytest.fixture
def server_script(tmp_path: Path) -> Path:
    path = tmp_path / "server.py"
    path.write_text(SERVER)
    return path


def spec_for(script: Path, port: int, *extra: str, timeout: float = 10.0) -> ProcessSpec:
    return ProcessSpec(
        name="toy",
        argv=[sys.executable, str(script), str(port), *extra],
        health=TcpCheck("127.0.0.1", port),
        ports=[port],
        start_timeout_s=timeout,
        stop_timeout_s=2.0,
        address=f"127.0.0.1:{port}",
    )


@pytest.mark.integration  # starts a process
def test_start_waits_until_healthy_and_captures_the_log(
    tmp_path: Path, server_script: Path
) -> None:
    sup = Supervisor(tmp_path / "logs")
    port = free_port()
    proc = sup.start(spec_for(server_script, port))
    try:
        assert is_alive(proc)
        assert TcpCheck("127.0.0.1", port)()
        wait_for(lambda: "listening" in proc.log_path.read_text(), "the log line", 10)
        assert proc.log_path == tmp_path / "logs" / "toy.log"
        assert proc.probe == f"tcp://127.0.0.1:{port}"
    finally:
        sup.stop_all()
    assert not is_alive(proc)
    assert sup.running == []


def test_missing_binary_names_the_component(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "logs")
    spec = ProcessSpec(
        name="nats", argv=["definitely-not-a-binary-x1"], health=TcpCheck("127.0.0.1", 1)
    )
    with pytest.raises(ComponentError) as caught:
        sup.start(spec)
    assert str(caught.value) == (
        "nats: binary 'definitely-not-a-binary-x1' not found (run `make setup`)"
    )
    assert sup.running == []


def test_port_in_use_is_refused_before_start(tmp_path: Path, server_script: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sup = Supervisor(tmp_path / "logs")
        with pytest.raises(ComponentError) as caught:
            sup.start(spec_for(server_script, port))
    assert str(caught.value) == f"toy: port 127.0.0.1:{port} is already in use"
    assert sup.running == []
    assert not (tmp_path / "logs" / "toy.log").exists()


@pytest.mark.integration  # starts a process
def test_child_that_dies_during_start_up_is_reported_with_its_log(tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text("import sys; print('boom: bad config', file=sys.stderr); sys.exit(3)")
    sup = Supervisor(tmp_path / "logs")
    spec = ProcessSpec(
        name="envoy",
        argv=[sys.executable, str(script)],
        health=TcpCheck("127.0.0.1", free_port()),
        start_timeout_s=10,
    )
    with pytest.raises(ComponentError) as caught:
        sup.start(spec)
    log_path = tmp_path / "logs" / "envoy.log"
    assert str(caught.value) == f"envoy: exited with code 3 during start-up (see {log_path})"
    assert "boom: bad config" in log_path.read_text()
    assert sup.running == []


@pytest.mark.integration  # starts a process
def test_child_never_healthy_times_out_and_is_stopped(tmp_path: Path) -> None:
    script = tmp_path / "idle.py"
    script.write_text("import time; time.sleep(600)")
    sup = Supervisor(tmp_path / "logs")
    port = free_port()
    spec = ProcessSpec(
        name="mongodb",
        argv=[sys.executable, str(script)],
        health=TcpCheck("127.0.0.1", port),
        start_timeout_s=0.5,
        stop_timeout_s=1.0,
    )
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ComponentError) as caught:
        sup.start(spec)
    assert str(caught.value) == (
        f"mongodb: not healthy after 0.5s (tcp://127.0.0.1:{port})"
        f" (see {tmp_path / 'logs' / 'mongodb.log'})"
    )
    leftovers = {
        p.pid
        for p in psutil.Process().children(recursive=True)
        if p.status() != psutil.STATUS_ZOMBIE
    } - before
    assert leftovers == set()


def test_start_all_checks_every_spec_before_starting_any(
    tmp_path: Path, server_script: Path
) -> None:
    sup = Supervisor(tmp_path / "logs")
    good = spec_for(server_script, free_port())
    bad = ProcessSpec(name="broken", argv=["no-such-binary-y2"], health=TcpCheck("127.0.0.1", 1))
    seen: list[RunningProcess] = []
    with pytest.raises(ComponentError, match="broken: binary"):
        sup.start_all([good, bad], on_started=seen.append)
    assert seen == []
    assert not (tmp_path / "logs" / "toy.log").exists()


@pytest.mark.integration  # starts a process
def test_start_all_rolls_back_what_started_when_one_fails(
    tmp_path: Path, server_script: Path
) -> None:
    sup = Supervisor(tmp_path / "logs")
    good = spec_for(server_script, free_port())
    crash = tmp_path / "crash.py"
    crash.write_text("raise SystemExit(2)")
    bad = ProcessSpec(
        name="broken", argv=[sys.executable, str(crash)], health=TcpCheck("127.0.0.1", free_port())
    )
    seen: list[RunningProcess] = []
    with pytest.raises(ComponentError, match="broken: exited with code 2"):
        sup.start_all([good, bad], on_started=seen.append)
    assert [p.name for p in seen] == ["toy"]
    assert not is_alive(seen[0])
    assert sup.running == []


@pytest.mark.integration  # starts a process
def test_stop_kills_the_whole_process_group(tmp_path: Path, server_script: Path) -> None:
    sup = Supervisor(tmp_path / "logs")
    proc = sup.start(spec_for(server_script, free_port(), "spawn"))
    wait_for(lambda: "grandchild" in proc.log_path.read_text(), "the grandchild's pid", 10)
    grandchild = int(proc.log_path.read_text().split("grandchild ")[1].split()[0])
    assert psutil.pid_exists(grandchild)
    stop_process(proc)
    wait_for(
        lambda: (
            not psutil.pid_exists(grandchild)
            or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
        ),
        "the grandchild to be gone",
        10,
    )
    assert not is_alive(proc)
    stop_process(proc)  # idempotent


def test_a_reused_pid_is_not_mistaken_for_our_process() -> None:
    me = psutil.Process(os.getpid())
    assert is_alive(
        RunningProcess(name="x", pid=me.pid, create_time=me.create_time(), log_path=Path("x"))
    )
    impostor = RunningProcess(
        name="x", pid=me.pid, create_time=me.create_time() - 100, log_path=Path("x")
    )
    assert not is_alive(impostor)
    stop_process(impostor)  # must not signal us
    assert psutil.pid_exists(me.pid)


def test_free_ports_are_below_the_range_outgoing_connections_take() -> None:
    """A port from the ephemeral range can be taken by any client's connection between
    free_port() and the server's bind; ours come from below it, never twice."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(10000 <= port < low for port in ports)
    with socket.socket() as server:
        server.bind(("127.0.0.1", ports[0]))  # and it can be listened on


@pytest.mark.integration  # starts a process
def test_a_port_another_process_handed_out_is_not_handed_out_again() -> None:
    """Two test runs side by side: a port one handed out (for a server that binds it only
    later) is not handed out by the other. Without the shared reservations ~4 of 300 ports
    would be the same here."""
    other = subprocess.run(
        [sys.executable, "-c", OTHER_RUN],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    theirs = {int(port) for port in other.stdout.split()}
    assert len(theirs) == 300
    ours = {free_port() for _ in range(300)}
    assert ours.isdisjoint(theirs)


def test_an_old_reservation_does_not_hold_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    held, old = free_port(), free_port()
    for port in (held, old):
        supervisor._handed_out.discard(port)  # as if another process had handed them out
    stale = time.time() - supervisor.RESERVED_FOR_S - 60
    os.utime(supervisor.RESERVED_DIR / str(old), (stale, stale))
    picks = iter([held, old])
    monkeypatch.setattr(supervisor.random, "randrange", lambda *_: next(picks))
    assert free_port() == old


@pytest.mark.integration  # starts a process
def test_a_component_gets_the_open_files_it_asks_for(tmp_path: Path, server_script: Path) -> None:
    """Envoy asks for a socket per health-checked instance: a child started with 256 open
    files is raised at start to what it asked for (here below the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(4096, hard)
    port = free_port()
    sup = Supervisor(tmp_path / "logs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # what the child inherits
    try:
        proc = sup.start(dataclasses.replace(spec_for(server_script, port), open_files=wanted))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert psutil.Process(proc.pid).rlimit(psutil.RLIMIT_NOFILE)[0] == wanted
    finally:
        sup.stop_all()


def test_the_watchdog_outlives_a_restart_that_fails_with_an_os_error(tmp_path: Path) -> None:
    """A restart that cannot happen now (here: its log cannot be opened, as on a full disk)
    is counted as another death, to be tried again: the watchdog itself goes on."""
    from datetime import UTC, datetime

    from sluice.common.platform import ComponentSpec, LocalPlatform, PlatformState
    from sluice.common.settings import Settings
    from sluice.common.supervise import Watchdog

    platform = LocalPlatform(Settings(state_dir=tmp_path))
    watchdog = Watchdog(platform)
    (tmp_path / "logs" / "worker.log").mkdir(parents=True)  # opening it raises an OSError
    spec = ComponentSpec(
        name="worker", argv=[sys.executable, "-c", "pass"], probe="tcp://127.0.0.1:1"
    )
    dead = RunningProcess(name="worker", pid=2**22 + 1, create_time=0.0, log_path=tmp_path)
    state = PlatformState(
        started_at=datetime.now(UTC), state_dir=tmp_path, nats_url="", mongodb_uri="",
        registry_address=None, envoy_http_port=None, envoy_https_port=None, domain="",
        processes=[dead], components=[spec],
    )  # fmt: skip
    watchdog._next_attempt["worker"] = 0.0
    after = watchdog.restart(state, dead)
    assert after.restarts == 1 and "worker.log" in after.last_error
