"""Test helpers: start real inference server processes and talk to them over HTTP."""

from __future__ import annotations

import http.client
import json
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.common.health import HttpCheck
from sluice.common.supervisor import ProcessSpec, RunningProcess, Supervisor, free_port
from sluice.testing.wait import wait_for


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[str, str]]

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        raw = reply.getheaders()
        return Response(reply.status, {k.lower(): v for k, v in raw}, reply.read(), raw)
    finally:
        conn.close()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll `check` until it is true; fail the test after `timeout` seconds."""
    wait_for(check, what, timeout)


@dataclass
class Server:
    port: int
    metrics_port: int
    process: RunningProcess

    def get(self, path: str, **kwargs: Any) -> Response:
        return request(self.port, "GET", path, **kwargs)

    def post(self, body: bytes | str | dict[str, Any], path: str = "/score", **kw: Any) -> Response:
        data = json.dumps(body) if isinstance(body, dict) else body
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        return request(self.port, "POST", path, body=data, headers=headers, **kw)

    def metrics(self) -> str:
        return request(self.metrics_port, "GET", "/metrics").body.decode()

    def log(self) -> str:
        return self.process.log_path.read_text()

    def wait_ready(self, timeout: float = 60.0) -> None:  # init() on a busy machine: 20 s was short
        wait_until(lambda: self.get("/ready").status == 200, "readiness", timeout)


def write_script(folder: Path, source: str, name: str = "score.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(source))
    return folder


def server_argv(
    *,
    port: int,
    code: Path | None = None,
    model: Path | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    argv = [sys.executable, "-m", "sluice.inference", "--port", str(port), "--log-format", "json"]
    if code is not None:
        argv += ["--code", str(code), "--scoring-script", "score.py"]
    if model is not None:
        argv += ["--model", str(model)]
    return [*argv, *extra]


def start_server(
    supervisor: Supervisor,
    name: str,
    *,
    code: Path | None = None,
    model: Path | None = None,
    extra: Sequence[str] = (),
    ready: bool = True,
    scope: tuple[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """Start a server (healthy = liveness answers) and, unless told not to, wait for readiness.

    `scope` = (endpoint, deployment) as the provisioner sets them (AZUREML_*_NAME)."""
    port, metrics_port = free_port(), free_port()
    argv = server_argv(
        port=port, code=code, model=model, extra=[*extra, "--metrics-port", str(metrics_port)]
    )
    spec = ProcessSpec(
        name=name,
        argv=argv,
        health=HttpCheck(f"http://127.0.0.1:{port}/"),
        ports=[port, metrics_port],
        start_timeout_s=60,
        stop_timeout_s=5,
        env={
            **(
                {"AZUREML_ENDPOINT_NAME": scope[0], "AZUREML_DEPLOYMENT_NAME": scope[1]}
                if scope
                else {}
            ),
            **(env or {}),
        },
    )
    server = Server(port, metrics_port, supervisor.start(spec))
    if ready:
        server.wait_ready()
    return server
