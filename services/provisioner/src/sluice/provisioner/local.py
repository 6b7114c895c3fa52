"""Compute backend `local`: each instance is an inference-server process on a loopback port.

The instance type maps to worker processes (its vCPUs, at most the machine's
and at most max_concurrent_requests) and to a memory ceiling the provisioner
enforces by replacing an instance whose resident memory exceeds it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from sluice.common.resources import OnlineDeploymentSpec
from sluice.common.supervisor import free_port
from sluice.provisioner.catalogue import InstanceType

STOP_GRACE_S = 5.0


@dataclass
class LocalInstance:
    """One running inference server."""

    id: str
    endpoint: str
    deployment: str
    spec_version: int
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: datetime
    memory_limit: int
    ready: bool = False
    liveness_failures: int = 0
    readiness_failures: int = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def exit_code(self) -> int | None:
        return self.process.poll()

    def rss(self) -> int:
        try:
            return int(psutil.Process(self.process.pid).memory_info().rss)
        except psutil.Error:
            return 0


@dataclass(frozen=True)
class InstancePlan:
    """What to run: resolved paths and the interpreter of the deployment's environment."""

    python: str
    model: Path | None
    code: Path | None
    scoring_script: str | None


class LocalBackend:
    def __init__(self, logs_root: Path, host: str = "127.0.0.1"):
        self.logs_root = logs_root
        self.host = host
        self._http = httpx.AsyncClient(timeout=2.0)

    async def close(self) -> None:
        await self._http.aclose()

    def instance_logs(self, endpoint: str, deployment: str) -> Path:
        return self.logs_root / endpoint / deployment

    def start(
        self,
        spec: OnlineDeploymentSpec,
        version: int,
        plan: InstancePlan,
        instance_type: InstanceType,
    ) -> LocalInstance:
        instance_id = uuid.uuid4().hex[:8]
        port = free_port(self.host)
        rs = spec.request_settings
        workers = max(
            1,
            min(instance_type.vcpus, os.cpu_count() or 1, rs.max_concurrent_requests_per_instance),
        )
        argv = [
            plan.python, "-m", "sluice.inference",
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
        folder = self.instance_logs(spec.endpoint_name, spec.name)
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / f"{instance_id}.log"
        env = {
            **os.environ,
            **spec.environment_variables,
            "AZUREML_DEPLOYMENT_NAME": spec.name,
            "AZUREML_ENDPOINT_NAME": spec.endpoint_name,
            "SLUICE_INSTANCE_ID": instance_id,
        }
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(plan.code) if plan.code else None,
            )
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
        )

    async def probe(self, instance: LocalInstance, path: str, timeout_s: float) -> bool:
        try:
            response = await self._http.get(f"http://{instance.address}{path}", timeout=timeout_s)
        except httpx.HTTPError:
            return False
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
