"""Compute backend `local`: each instance is an inference-server process on a loopback port.

An instance runs one worker process, as Azure's inference server does, or the number
Azure's own `WORKER_COUNT` environment variable asks for (at most its instance type's
vCPUs); the instance type's memory is a ceiling the provisioner enforces by replacing
an instance whose resident memory exceeds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import psutil

from sluice.common import confine, gateway_auth
from sluice.common.catalogue import InstanceType
from sluice.common.collected import collected_dir, collector_argv
from sluice.common.handover import hand_over
from sluice.common.isolation import (
    Account,
    IsolationError,
    account_for,
    collector_folder,
    harden_state_dir,
    instance_env,
    make_platform_dir,
    make_private_dir,
    private_copy,
    reachable_by_others,
    remove_account,
    traces_folder,
)
from sluice.common.resources import OnlineDeploymentSpec
from sluice.common.settings import TracingSettings
from sluice.common.supervisor import free_port
from sluice.common.tracing import instance_folder, otlp_port
from sluice.provisioner.spares import SparePool, spare_key
from sluice.provisioner.store import ProcessRecord, RunningRecord

STOP_GRACE_S = 5.0
DEFAULT_COLLECTOR_MAX_BYTES = 1024**3  # per deployment (settings.data_collector_max_bytes)


class InstanceProcess(Protocol):
    """What the provisioner does with an instance's process (`subprocess.Popen` has it)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class AdoptedProcess:
    """An instance's process started by an earlier provisioner (see `LocalBackend.adopt`).

    Not our child: it is signalled and watched through psutil, and its exit
    status goes to its new parent, so `poll()` and `wait()` say EXIT_UNKNOWN.
    """

    EXIT_UNKNOWN = -1

    def __init__(self, process: psutil.Process):
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    def poll(self) -> int | None:
        try:  # is_running() compares the start time too: a reused pid is not it
            running = self._process.is_running() and self._process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            running = False
        return None if running else self.EXIT_UNKNOWN

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(psutil.Error):
            self._process.send_signal(sig)  # psutil refuses a reused pid

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        while self.poll() is None:  # a zombie counts as gone: init reaps it, not us
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.05)
        return self.EXIT_UNKNOWN

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class LocalInstance:
    """One running inference server."""

    id: str
    endpoint: str
    deployment: str
    spec_version: int
    host: str
    port: int
    process: InstanceProcess
    log_path: Path
    started_at: datetime
    memory_limit: int
    workers: int = 1
    ready: bool = False
    ready_at: float = 0.0  # time.monotonic() when it passed readiness
    draining: bool = False  # out of routing; stopped once the gateway no longer routes it
    draining_since: float = 0.0
    drain_reason: str = ""
    liveness_failures: int = 0
    readiness_failures: int = 0
    # The last measurement (see `measure`): CPU % over the previous interval, resident bytes.
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    measured: bool = False
    # Requests (other than probes) its server had seen at the last liveness probe; None: not
    # told yet (or a server too old to tell). Scale to zero reads idleness from it.
    requests_seen: int | None = None
    _procs: dict[int, psutil.Process] = field(default_factory=dict)
    _readings: int = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def exit_reason(self) -> str:
        code = self.process.poll()
        known = code is not None and not isinstance(self.process, AdoptedProcess)
        return f"exited with code {code}" if known else "exited"

    def record(self) -> ProcessRecord:
        """What a provisioner restarted after this one dies needs to adopt it (`adopt`)."""
        return ProcessRecord(
            address=self.address,
            version=self.spec_version,
            pid=self.process.pid,
            create_time=_create_time(self.process.pid),
            workers=self.workers,
            memory_limit=self.memory_limit,
            log_path=str(self.log_path),
        )

    def measure(self) -> None:
        """Refresh `cpu_percent` (100 = one core, since the previous call) and `rss_bytes`
        of the instance and its worker processes."""
        usage = self._usage()
        if usage is not None:
            self.cpu_percent, self.rss_bytes = usage
            # The first CPU reading has nothing to compare with (it reads 0): not a measurement.
            self.measured = bool(self._procs) and self._readings > 0
            self._readings += 1

    def _usage(self) -> tuple[float, int] | None:
        try:
            root = self._procs.setdefault(self.process.pid, psutil.Process(self.process.pid))
            for child in root.children(recursive=True):
                self._procs.setdefault(child.pid, child)
            live = [p for p in self._procs.values() if p.is_running()]
            cpu = sum(p.cpu_percent(interval=None) for p in live)
            rss = sum(p.memory_info().rss for p in live)
        except psutil.Error:
            return None
        return cpu, rss


@dataclass(frozen=True)
class InstancePlan:
    """What to run: resolved paths and the interpreter of the deployment's environment.

    `LocalBackend.prepare` turns the artifact store's paths into the deployment's private
    copies and adds who runs it (`account`) and its HOME (`home`).
    """

    python: str
    model: Path | None
    code: Path | None
    scoring_script: str | None
    account: Account | None = None
    home: Path | None = None


class LocalBackend:
    def __init__(
        self,
        logs_root: Path,
        host: str = "127.0.0.1",
        state_dir: Path | None = None,
        secret_key: str | None = None,
        collector_max_bytes: int = DEFAULT_COLLECTOR_MAX_BYTES,
        tracing: TracingSettings | None = None,
        landlock: bool = False,
    ):
        self.logs_root = logs_root
        # compose and Kubernetes: instances start in a Landlock sandbox (sluice.common.confine),
        # always cold (a spare imports the environment before it knows its deployment).
        self._landlock = landlock
        self._collector_max_bytes = collector_max_bytes
        self._tracing = tracing or TracingSettings()
        self.host = host
        self._secret_key = secret_key  # derives each deployment's gateway secret
        self.state_dir = state_dir or logs_root.parent
        self.workspaces = self.state_dir / "workspaces"
        self._copies: dict[Path, set[str]] = {}  # workspace -> digests of the latest plan
        self._http = httpx.AsyncClient(timeout=2.0)
        self._spares = SparePool(logs_root)

    def warm_up(self, python: str) -> None:
        """Have a spare ready for `python` before the first deployment asks for one (when it
        can have a shared one: see spares.py)."""
        key = spare_key(python)
        if not self._landlock and key is not None:
            self._spares.replenish(key)

    async def close(self) -> None:
        self._spares.close()
        await self._http.aclose()

    def instance_logs(self, endpoint: str, deployment: str) -> Path:
        return self.logs_root / endpoint / deployment

    def workspace(self, endpoint: str, deployment: str) -> Path:
        return self.workspaces / endpoint / deployment

    def prepare(self, spec: OnlineDeploymentSpec, plan: InstancePlan) -> InstancePlan:
        """The deployment's user, and private copies of its model and code in its workspace.

        Blocking (copies files): call it from a thread. Raises IsolationError.
        """
        harden_state_dir(self.state_dir)
        account = account_for(spec.endpoint_name, spec.name)
        folder = self.workspace(spec.endpoint_name, spec.name)
        for shared in (self.workspaces, folder.parent):
            shared.mkdir(parents=True, exist_ok=True)
            shared.chmod(0o711)
        blocked = reachable_by_others(folder.parent) if account.switches else None
        if blocked is not None:
            raise IsolationError(
                f"the deployment's user cannot reach its workspace {folder}: {blocked} is "
                "private (chmod o+x it, or put the state directory somewhere traversable)"
            )
        make_platform_dir(folder)
        home = make_private_dir(folder / "home", account)
        if spec.data_collector.enabled:
            collector_folder(self.state_dir, spec.endpoint_name, spec.name, account)
        if self._traced(spec):
            traces_folder(self.state_dir, spec.endpoint_name, spec.name, account)
        copies = make_platform_dir(folder / "artifacts")
        # Copies are named by the artifact's digest (a scale change copies nothing); those of
        # this plan and the previous one (whose instances may still run) are kept.
        sources = [p for p in (plan.model, plan.code) if p is not None]
        digests = {p.parent.name for p in sources}
        keep = digests | self._copies.get(folder, set())
        for old in copies.iterdir():
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
        self._copies[folder] = digests
        model = code = None
        if plan.model is not None:
            model = private_copy(plan.model, copies / plan.model.parent.name, account)
            model /= plan.model.name
        if plan.code is not None:
            code = private_copy(plan.code, copies / plan.code.parent.name, account)
            code /= plan.code.name
        return dataclasses.replace(plan, model=model, code=code, account=account, home=home)

    def remove_workspace(self, endpoint: str, deployment: str) -> None:
        """Delete a deleted deployment's files and user (its instances have stopped)."""
        folder = self.workspace(endpoint, deployment)
        self._copies.pop(folder, None)
        self._spares.forget(folder / "home")
        shutil.rmtree(folder, ignore_errors=True)
        remove_account(endpoint, deployment)

    def start(
        self,
        spec: OnlineDeploymentSpec,
        version: int,
        plan: InstancePlan,
        instance_type: InstanceType,
    ) -> LocalInstance:
        # The key of its cost record (instance_history) for good: 48 random bits, where 32
        # gave even odds of a collision (a failed start) after some 65k starts.
        instance_id = uuid.uuid4().hex[:12]
        port = free_port(self.host)
        rs = spec.request_settings
        # Concurrency follows max_concurrent_requests_per_instance inside one process; more
        # processes only when asked with Azure's own knob, WORKER_COUNT (each one loads the model).
        workers = _worker_count(spec.environment_variables.get("WORKER_COUNT"), instance_type)
        argv = [
            "--host", self.host,
            "--port", str(port),
            "--workers", str(workers),
            "--max-concurrent-requests", str(rs.max_concurrent_requests_per_instance),
            # Azure queues up to 2 x concurrency before answering 429 (SPEC.md, 429).
            "--max-queue", str(rs.max_concurrent_requests_per_instance),
            "--request-timeout-ms", str(rs.request_timeout_ms),
            "--log-format", "json",
        ]  # fmt: skip
        if plan.model is not None:
            argv += ["--model", str(plan.model)]
        if plan.code is not None and plan.scoring_script:
            argv += ["--code", str(plan.code), "--scoring-script", plan.scoring_script]
        argv += self._collector_argv(spec) + self._tracing_argv(spec)
        folder = self.instance_logs(spec.endpoint_name, spec.name)
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / f"{instance_id}.log"
        if plan.account is None or plan.home is None:
            raise IsolationError("start() needs a plan from prepare()")
        account = plan.account
        env = instance_env(
            spec, instance_id, plan.python, plan.home, plan.code, plan.scoring_script
        )
        if self._secret_key:  # only the gateway may call it (sluice.common.gateway_auth)
            secret = gateway_auth.secret_for(self._secret_key, spec.endpoint_name, spec.name)
            env[gateway_auth.ENV] = secret
        cwd = str(plan.code) if plan.code else str(plan.home)
        # A sandbox (files, network or both) must be in place before the deployment's code
        # runs: such an instance starts cold, not from a spare that imported it already.
        sandbox = self._sandbox(spec, plan, port)
        key = None if sandbox else spare_key(plan.python, account, plan.home)
        process = self._spares.take(key) if key is not None else None
        if process is not None:
            job: dict[str, object] = {"argv": argv, "env": env, "cwd": cwd}
            if account.switches and key is not None and key.user is None:
                job["user"] = [account.uid, account.gid]  # a shared spare drops to it
            hand_over(process, job, log_path)
        else:
            switch: dict[str, Any] = {}
            if account.switches:
                switch = {"user": account.uid, "group": account.gid, "extra_groups": []}
            command = [plan.python, "-m", "sluice.inference", *argv]
            payload = b""
            if sandbox:  # on stdin: the deployment's uid may not read our files
                payload = json.dumps({**sandbox, "argv": command}).encode()
                command = confine.command(plan.python)
            with log_path.open("ab") as out:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE if payload else subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=cwd,
                    umask=0o077,
                    **switch,
                )
            if process.stdin is not None:
                with process.stdin, contextlib.suppress(BrokenPipeError):
                    process.stdin.write(payload)
        if key is not None:
            self._spares.replenish(key)
        return LocalInstance(
            id=instance_id,
            endpoint=spec.endpoint_name,
            deployment=spec.name,
            spec_version=version,
            host=self.host,
            port=port,
            process=process,
            log_path=log_path,
            started_at=datetime.now(UTC),
            memory_limit=instance_type.memory_bytes,
            workers=workers,
        )

    def _sandbox(self, spec: OnlineDeploymentSpec, plan: InstancePlan, port: int) -> dict[str, Any]:
        """confine.py's spec for this instance, empty when it runs unconfined.

        With SLUICE_LANDLOCK (confine.py adds the system's folders): read the platform, its
        environment and its model and code (the workspace's copies); write its HOME and,
        when on, its data collector's and its traces' folders. With
        `egress_public_network_access: disabled`: TCP bind to its own port only and connect
        only to the trace collector (when it exports spans there), on either backend setting."""
        sandbox: dict[str, Any] = {}
        if self._landlock:
            assert plan.home is not None
            copies = {str(path.parent) for path in (plan.model, plan.code) if path is not None}
            write = [str(plan.home)]
            if spec.data_collector.enabled:
                write.append(str(collected_dir(self.state_dir, spec.endpoint_name, spec.name)))
            if self._traced(spec) and self._tracing.local_files:
                write.append(str(instance_folder(self.state_dir, spec.endpoint_name, spec.name)))
            read = sorted(confine.platform_paths(plan.python) | copies)
            sandbox = {"read": read, "write": write}
        if spec.egress_disabled:
            connect = []
            if self._traced(spec) and self._tracing.otlp_endpoint:
                connect.append(otlp_port(self._tracing.otlp_endpoint))
            sandbox = {"read": None, "write": [], **sandbox}
            sandbox["net"] = {"bind": [port], "connect": connect}
        return sandbox

    def _traced(self, spec: OnlineDeploymentSpec) -> bool:
        """Requests are traced when the platform traces or the deployment asks for it."""
        return self._tracing.enabled or spec.app_insights_enabled

    def _tracing_argv(self, spec: OnlineDeploymentSpec) -> list[str]:
        if not self._traced(spec):
            return []
        tracing = self._tracing
        argv = ["--trace-sampling-ratio", repr(tracing.sampling_ratio)]
        if tracing.local_files:
            folder = instance_folder(self.state_dir, spec.endpoint_name, spec.name)
            argv += ["--trace-dir", str(folder)]
        if tracing.otlp_endpoint:
            argv += ["--trace-otlp-endpoint", tracing.otlp_endpoint]
        return argv

    def _collector_argv(self, spec: OnlineDeploymentSpec) -> list[str]:
        folder = collected_dir(self.state_dir, spec.endpoint_name, spec.name)
        return collector_argv(spec, str(folder), self._collector_max_bytes)

    async def probe(self, instance: LocalInstance, path: str, timeout_s: float) -> bool:
        try:
            response = await self._http.get(f"http://{instance.address}{path}", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        seen = response.headers.get("x-sluice-requests")
        if seen is not None and seen.isdigit():
            instance.requests_seen = int(seen)  # only liveness answers carry it
        return response.status_code == 200

    @staticmethod
    def stop(instance: LocalInstance) -> None:
        """SIGTERM the instance (it stops its workers), SIGKILL what is left after a grace period.

        Instances stay in the provisioner's process group, so `sluice down` (which
        signals the group) never leaves one behind.
        """
        try:
            children = psutil.Process(instance.process.pid).children(recursive=True)
        except psutil.Error:
            children = []
        if instance.alive:
            instance.process.send_signal(signal.SIGTERM)
        try:
            instance.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            instance.process.kill()
            instance.process.wait(timeout=STOP_GRACE_S)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()


def adopt(record: RunningRecord) -> LocalInstance | None:
    """The instance `record` describes, if its very process still runs (same pid, same start
    time, not a zombie); None otherwise. Whether it is healthy is for the caller to probe."""
    proc = record.process
    try:
        found = psutil.Process(proc.pid)
        if abs(found.create_time() - proc.create_time) > 0.01:
            return None  # the pid was reused: not ours
        if found.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    host, _, port = proc.address.rpartition(":")
    return LocalInstance(
        id=record.id,
        endpoint=record.endpoint,
        deployment=record.deployment,
        spec_version=proc.version,
        host=host,
        port=int(port),
        process=AdoptedProcess(found),
        log_path=Path(proc.log_path),
        started_at=record.started_at,
        memory_limit=proc.memory_limit,
        workers=proc.workers,
    )


def _create_time(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0  # already gone: nothing will match it


def reap_orphans(addresses: Collection[str]) -> set[str]:
    """Stop inference servers a previous provisioner left listening at `addresses` (host:port).

    Only a process that listens there and runs our inference server (or a spare)
    is stopped. Returns the addresses where one was.
    """
    ports = {int(address.rsplit(":", 1)[1]): address for address in addresses}
    stopped: set[str] = set()
    if not ports:
        return stopped
    for conn in psutil.net_connections("tcp"):  # one scan of the socket table for all of them
        if not (conn.laddr and conn.laddr.port in ports and conn.status == psutil.CONN_LISTEN):
            continue
        if not conn.pid:
            continue
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(conn.pid)
            command = " ".join(proc.cmdline())
            if "sluice.inference" in command or "sluice.provisioner.spare" in command:
                for child in proc.children(recursive=True):
                    child.kill()
                proc.kill()
                stopped.add(ports[conn.laddr.port])
    return stopped


def _worker_count(requested: str | None, instance_type: InstanceType) -> int:
    if not requested or not requested.isdigit() or int(requested) < 1:
        return 1
    return min(int(requested), instance_type.vcpus)


def tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a log file (or "" if it does not exist)."""
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 256 * 1024))
        text = handle.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])
