"""Start, health-check and stop child processes, each with its log in a file.

`sluice up` and the test fixtures both use it. Children run in their own
session (process group), so stopping one stops everything it spawned, and a
child outlives the command that started it (`sluice up` returns, `sluice
down` stops them later from the recorded pid and start time). Every failure
is a `ComponentError` whose message names the component and its log file.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil
from pydantic import BaseModel


class HealthCheck(Protocol):
    def __call__(self) -> bool: ...

    def describe(self) -> str: ...


class ComponentError(RuntimeError):
    """A component could not start (or stop); the message is one line for a human."""

    def __init__(self, component: str, problem: str, log_path: Path | None = None):
        self.component = component
        self.problem = problem
        self.log_path = log_path
        where = f" (see {log_path})" if log_path else ""
        super().__init__(f"{component}: {problem}{where}")


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: Sequence[str]
    health: HealthCheck
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    # Ports the process will bind; checked before start so a clash is named clearly.
    ports: Sequence[int] = ()
    host: str = "127.0.0.1"
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 10.0
    address: str = ""  # what to show users: a URL or host:port
    # Open files the process may need at least (0: what it inherits). Envoy holds a socket
    # per instance it health-checks: thousands of deployments outgrow the usual 1,024.
    open_files: int = 0


class RunningProcess(BaseModel):
    """What is needed to find a child again from another command (`sluice down`)."""

    name: str
    pid: int
    create_time: float
    log_path: Path
    address: str = ""
    probe: str = ""  # HealthCheck.describe() of the spec; `sluice status` re-checks it
    stop_timeout_s: float = 10.0
    # Kept by the platform's watchdog (sluice.common.supervise):
    restarts: int = 0  # times it was started again after dying
    failures: int = 0  # deaths since it last stayed up for a while (drives the back-off)
    last_error: str = ""  # why it last died or failed to start
    # (pid, create_time) of earlier runs whose process group still held processes when this
    # one started: a provisioner killed with -9 leaves its instances there, and its successor
    # adopts them. Stopping this process stops them too.
    earlier_groups: list[tuple[int, float]] = []

    def successor(self, new: RunningProcess) -> RunningProcess:
        """`new`, started in place of this dead run: it inherits the groups with survivors."""
        groups = [*self.earlier_groups, (self.pid, self.create_time)]
        return new.model_copy(update={"earlier_groups": [g for g in groups if group_survivors(*g)]})


def raise_open_files(pid: int, wanted: int) -> None:
    """Let `pid` open `wanted` files: its soft limit up to the hard one, which only root
    (with CAP_SYS_RESOURCE) may raise as well, up to the kernel's `fs.nr_open`. Set from
    outside (prlimit) right after the start, before the process has opened more than a few."""
    child = psutil.Process(pid)
    soft, hard = child.rlimit(psutil.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    if hard < wanted:
        try:  # as root with CAP_SYS_RESOURCE (not in every container)
            more = min(wanted, int(Path("/proc/sys/fs/nr_open").read_text()))
            child.rlimit(psutil.RLIMIT_NOFILE, (more, more))
            return
        except (OSError, ValueError, psutil.AccessDenied):
            pass
    child.rlimit(psutil.RLIMIT_NOFILE, (min(wanted, hard), hard))


def resolve_binary(name: str) -> str | None:
    """Find an executable beside the running interpreter (the project's venv), else on PATH."""
    if os.sep in name:
        return name if os.access(name, os.X_OK) else None
    beside = Path(sys.executable).absolute().parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


LISTEN_PORTS_FROM = 10000  # free_port's range starts here and ends below the ephemeral one
_handed_out: set[int] = set()  # by this process, not handed out twice
# Ports handed out by any process of this user recently (a file per port): another process
# (a second test run, `sluice up` beside it) must not take a port handed out for a server
# that binds it only later (seen: a metrics service's access-log port, given to Envoy at the
# start of a test session and bound by the service minutes later, taken meanwhile by a
# server of a parallel test run: "exited with code 1 during start-up").
RESERVED_DIR = Path(tempfile.gettempdir()) / f"sluice-ports-{os.getuid()}"
RESERVED_FOR_S = 1800.0


def _reserve(port: int) -> bool:
    """Whether `port` was free of other processes' recent reservations; it is ours now."""
    try:
        RESERVED_DIR.mkdir(mode=0o700, exist_ok=True)
        marker = RESERVED_DIR / str(port)
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            if time.time() - marker.stat().st_mtime < RESERVED_FOR_S:
                return False
            os.utime(marker)  # an old reservation: its server is long bound, or gone
            return True
        os.close(fd)
    except OSError:
        return True  # no shared folder (read-only /tmp...): this process's own set only
    return True


def _ephemeral_low() -> int:
    """The first port the kernel gives outgoing connections (Linux default 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a server started a moment later.

    Taken below the ephemeral range: a port the kernel handed out (`bind(host, 0)`) is one
    it also gives outgoing connections, and any client connecting anywhere on the machine
    can take it before the server binds it (seen: a service's Prometheus port, "Address
    already in use" at start; a database restarted on its port after kill -9).
    """
    high = _ephemeral_low()
    if high - LISTEN_PORTS_FROM < 1000:  # an unusual range: let the kernel choose
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])
    for _ in range(200):
        port = random.randrange(LISTEN_PORTS_FROM, high)  # noqa: S311 - not a secret
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        if _reserve(port):
            return port
    raise OSError(f"no free port between {LISTEN_PORTS_FROM} and {high} on {host}")


class Supervisor:
    """Starts children detached from this process; remembers them to stop them."""

    def __init__(self, logs_dir: Path, *, poll_interval_s: float = 0.05):
        self.logs_dir = logs_dir
        self._poll = poll_interval_s
        self.running: list[RunningProcess] = []

    def preflight(self, spec: ProcessSpec) -> str:
        """Check the binary exists and the ports are free; return the binary's path."""
        binary = resolve_binary(spec.argv[0])
        if binary is None:
            raise ComponentError(spec.name, f"binary {spec.argv[0]!r} not found (run `make setup`)")
        for port in spec.ports:
            if port and port_in_use(spec.host, port):
                raise ComponentError(spec.name, f"port {spec.host}:{port} is already in use")
        return binary

    def start(self, spec: ProcessSpec) -> RunningProcess:
        binary = self.preflight(spec)
        log_path = self.logs_dir / f"{spec.name}.log"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            log_file.write(
                f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {spec.name}\n".encode()
            )
            log_file.flush()
            process = subprocess.Popen(
                [binary, *spec.argv[1:]],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **spec.env},
                cwd=spec.cwd,
                start_new_session=True,
            )
        if spec.open_files:
            raise_open_files(process.pid, spec.open_files)
        running = RunningProcess(
            name=spec.name,
            pid=process.pid,
            create_time=psutil.Process(process.pid).create_time(),
            log_path=log_path,
            address=spec.address,
            probe=spec.health.describe(),
            stop_timeout_s=spec.stop_timeout_s,
        )
        try:
            self._wait_healthy(spec, process, log_path)
        except ComponentError:
            stop_process(running)
            raise
        self.running.append(running)
        return running

    def _wait_healthy(
        self, spec: ProcessSpec, process: subprocess.Popen[bytes], log_path: Path
    ) -> None:
        deadline = time.monotonic() + spec.start_timeout_s
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                raise ComponentError(
                    spec.name, f"exited with code {code} during start-up", log_path
                )
            if spec.health():
                return
            time.sleep(self._poll)
        raise ComponentError(
            spec.name,
            f"not healthy after {spec.start_timeout_s:g}s ({spec.health.describe()})",
            log_path,
        )

    def start_all(
        self,
        specs: Sequence[ProcessSpec],
        *,
        on_started: Callable[[RunningProcess], None] | None = None,
    ) -> list[RunningProcess]:
        """Start `specs` in order; on any failure stop those already started and re-raise.

        Binaries and ports of every spec are checked first, so a clash starts nothing.
        """
        for spec in specs:
            self.preflight(spec)
        started: list[RunningProcess] = []
        try:
            for spec in specs:
                proc = self.start(spec)
                started.append(proc)
                if on_started:
                    on_started(proc)
        except BaseException:
            for proc in reversed(started):
                stop_process(proc)
                self.running.remove(proc)
            raise
        return started

    def stop_all(self) -> None:
        """Stop every child this supervisor started, newest first."""
        while self.running:
            stop_process(self.running.pop())


def is_alive(proc: RunningProcess) -> bool:
    """True if the recorded process still runs (the same one: pids get reused)."""
    try:
        ps = psutil.Process(proc.pid)
        return (
            abs(ps.create_time() - proc.create_time) < 0.01 and ps.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.Error:
        return False


def stop_process(proc: RunningProcess) -> None:
    """SIGTERM the child's process group, wait, then SIGKILL what is left. Idempotent.

    The group is stopped even when its leader is already dead: a provisioner
    killed with -9 leaves its model-server instances running in its group.
    """
    if not is_alive(proc):
        reap(proc.pid)
        _kill_orphans(proc)
        return
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + proc.stop_timeout_s
    while time.monotonic() < deadline:
        reap(proc.pid)
        if not is_alive(proc):
            break
        time.sleep(0.05)
    else:
        _signal_group(proc.pid, signal.SIGKILL)
    # Children that left the group are still descendants of nobody we know; the
    # group kill above is what catches grandchildren (e.g. worker processes).
    _signal_group(proc.pid, signal.SIGKILL)
    reap(proc.pid)
    _kill_orphans(proc)


def group_survivors(leader: int, create_time: float) -> list[psutil.Process]:
    """Processes still in the group `leader` led, started after it (so not a reused id)."""
    survivors = []
    for candidate in psutil.process_iter(["pid", "create_time"]):
        try:
            if (
                candidate.pid != leader
                and os.getpgid(candidate.pid) == leader
                and candidate.info["create_time"] >= create_time - 0.01
            ):
                survivors.append(candidate)
        except (ProcessLookupError, psutil.Error):
            continue
    return survivors


def _kill_orphans(proc: RunningProcess) -> None:
    """SIGTERM, then SIGKILL, what is left of its group (leader dead) and of earlier runs'."""
    survivors = group_survivors(proc.pid, proc.create_time)
    for group in proc.earlier_groups:
        survivors += group_survivors(*group)
    if not survivors:
        return
    for survivor in survivors:
        with contextlib.suppress(psutil.Error):
            survivor.terminate()
    _, alive = psutil.wait_procs(survivors, timeout=proc.stop_timeout_s)
    for survivor in alive:
        with contextlib.suppress(psutil.Error):
            survivor.kill()
    psutil.wait_procs(alive, timeout=2)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
