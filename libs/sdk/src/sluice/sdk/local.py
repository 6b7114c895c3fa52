"""`--local` deployments: the inference server on this machine, no control plane.

`LocalRunner.start` runs `python -m sluice.inference` for a deployment's
model, code and request settings as a detached background process (the same
server the provisioner runs per instance), waits until init() has returned,
and records it in `<state_dir>/local/<endpoint>/<deployment>.json` with its
log next to it, so later commands (`invoke`, `get-logs`, `delete`) find it.
It runs in the deployment's environment when the caller built one (`python`, the
CLI builds it as the platform does: sluice.common.environments), else in the
current Python environment; then `missing_requirements` tells which of the
environment's conda/pip requirements that environment lacks.
"""

from __future__ import annotations

import builtins
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from sluice.common.health import HttpCheck
from sluice.common.log import readable_log
from sluice.common.resources import RequestSettings
from sluice.common.supervisor import (
    ComponentError,
    ProcessSpec,
    RunningProcess,
    Supervisor,
    free_port,
    is_alive,
    stop_process,
)

LOG_LINES_IN_ERRORS = 30


class LocalRunError(RuntimeError):
    """A local deployment could not start, or was not found; the message says why."""


class LocalDeploymentState(BaseModel):
    """What `<state_dir>/local/<endpoint>/<deployment>.json` holds."""

    endpoint: str
    deployment: str
    host: str
    port: int
    metrics_port: int
    model: str | None
    code_dir: str | None
    scoring_script: str | None
    process: RunningProcess
    started_at: float


@dataclass(frozen=True)
class LocalDeployment:
    endpoint: str
    deployment: str
    scoring_uri: str
    metrics_uri: str
    log_path: Path
    pid: int
    alive: bool
    missing_requirements: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LocalResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class LocalRunner:
    """Starts, calls, shows and stops local deployments recorded under `state_dir`."""

    def __init__(
        self, state_dir: Path, *, host: str = "127.0.0.1", start_timeout_s: float = 120.0
    ) -> None:
        self.root = state_dir / "local"
        self.host = host
        self.start_timeout_s = start_timeout_s

    def start(
        self,
        endpoint: str,
        deployment: str,
        model: Path | None,
        code_dir: Path | None,
        scoring_script: str | None,
        request_settings: RequestSettings | None = None,
        *,
        requirements: str | Path | Sequence[str] | None = None,
        environment_variables: Mapping[str, str] | None = None,
        port: int | None = None,
        python: str | None = None,
    ) -> LocalDeployment:
        """Start (or replace) a deployment and wait until its init() has returned; in
        `python`'s environment (built for the deployment), else in this one."""
        settings = request_settings or RequestSettings()
        missing = []
        if python is None and requirements is not None:
            missing = missing_requirements(requirements)
        self.stop(endpoint, deployment)
        port = port or free_port(self.host)
        metrics_port = free_port(self.host)
        argv = [
            python or sys.executable, "-m", "sluice.inference",
            "--host", self.host,
            "--port", str(port),
            "--metrics-port", str(metrics_port),
            "--max-concurrent-requests", str(settings.max_concurrent_requests_per_instance),
            "--request-timeout-ms", str(settings.request_timeout_ms),
            "--log-format", "json",
        ]  # fmt: skip
        if model is not None:
            argv += ["--model", str(model.resolve())]
        if scoring_script is not None:
            argv += ["--code", str((code_dir or Path.cwd()).resolve())]
            argv += ["--scoring-script", scoring_script]
        spec = ProcessSpec(
            name=deployment,
            argv=argv,
            health=HttpCheck(f"http://{self.host}:{port}/ready"),
            # Azure's names for the deployment, as the provisioner gives them (the server
            # adds the script's folder and name).
            env={
                "AZUREML_ENDPOINT_NAME": endpoint,
                "AZUREML_DEPLOYMENT_NAME": deployment,
                **(environment_variables or {}),
            },
            cwd=code_dir.resolve() if code_dir is not None else None,
            ports=[port, metrics_port],
            host=self.host,
            start_timeout_s=self.start_timeout_s,
            address=f"http://{self.host}:{port}/score",
        )
        supervisor = Supervisor(self._folder(endpoint))
        try:
            process = supervisor.start(spec)
        except ComponentError as exc:
            raise LocalRunError(self._start_failure(endpoint, deployment, exc)) from None
        state = LocalDeploymentState(
            endpoint=endpoint,
            deployment=deployment,
            host=self.host,
            port=port,
            metrics_port=metrics_port,
            model=str(model) if model is not None else None,
            code_dir=str(code_dir) if code_dir is not None else None,
            scoring_script=scoring_script,
            process=process,
            started_at=time.time(),
        )
        self._state_path(endpoint, deployment).write_text(state.model_dump_json(indent=2))
        return self._describe(state, missing)

    def invoke(
        self,
        endpoint: str,
        body: bytes | str | Mapping[str, Any],
        deployment: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> LocalResponse:
        """POST `body` to /score of `deployment` (or of the endpoint's only one)."""
        state = self._find(endpoint, deployment)
        if isinstance(body, Mapping):
            data = json.dumps(body).encode()
        else:
            data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(
            f"http://{state.host}:{state.port}/score",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as reply:  # noqa: S310
                return LocalResponse(reply.status, dict(reply.headers.items()), reply.read())
        except urllib.error.HTTPError as error:
            return LocalResponse(error.code, dict(error.headers.items()), error.read())
        except urllib.error.URLError as error:
            raise LocalRunError(
                f"local deployment {endpoint}/{state.deployment} does not answer "
                f"({error.reason}); see {state.process.log_path}"
            ) from None

    def logs(self, endpoint: str, deployment: str | None = None, lines: int | None = None) -> str:
        """The deployment's log, or its last `lines` lines."""
        state = self._find(endpoint, deployment)
        return _tail(state.process.log_path, lines)

    def stop(self, endpoint: str, deployment: str | None = None) -> builtins.list[str]:
        """Stop the endpoint's deployments (or just `deployment`); return the names stopped."""
        stopped: builtins.list[str] = []
        for state in self._states(endpoint):
            if deployment is not None and state.deployment != deployment:
                continue
            stop_process(state.process)
            self._state_path(endpoint, state.deployment).unlink(missing_ok=True)
            stopped.append(state.deployment)
        return stopped

    def list(self) -> builtins.list[LocalDeployment]:
        """Every recorded local deployment, with whether its process still runs."""
        if not self.root.is_dir():
            return []
        return [
            self._describe(state)
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir())
            for state in self._states(folder.name)
        ]

    # helpers

    def _folder(self, endpoint: str) -> Path:
        return self.root / endpoint

    def _state_path(self, endpoint: str, deployment: str) -> Path:
        return self._folder(endpoint) / f"{deployment}.json"

    def _states(self, endpoint: str) -> builtins.list[LocalDeploymentState]:
        folder = self._folder(endpoint)
        if not folder.is_dir():
            return []
        return [
            LocalDeploymentState.model_validate_json(path.read_text())
            for path in sorted(folder.glob("*.json"))
        ]

    def _find(self, endpoint: str, deployment: str | None) -> LocalDeploymentState:
        states = self._states(endpoint)
        if deployment is not None:
            states = [s for s in states if s.deployment == deployment]
        if not states:
            which = f"{endpoint}/{deployment}" if deployment else endpoint
            raise LocalRunError(f"no local deployment {which}; create one with --local first")
        if len(states) > 1:
            names = ", ".join(s.deployment for s in states)
            raise LocalRunError(
                f"endpoint {endpoint} has several local deployments ({names}); name one"
            )
        return states[0]

    def _describe(
        self, state: LocalDeploymentState, missing: builtins.list[str] | None = None
    ) -> LocalDeployment:
        return LocalDeployment(
            endpoint=state.endpoint,
            deployment=state.deployment,
            scoring_uri=f"http://{state.host}:{state.port}/score",
            metrics_uri=f"http://{state.host}:{state.metrics_port}/metrics",
            log_path=state.process.log_path,
            pid=state.process.pid,
            alive=is_alive(state.process),
            missing_requirements=missing or [],
        )

    def _start_failure(self, endpoint: str, deployment: str, error: ComponentError) -> str:
        log_path = self._folder(endpoint) / f"{deployment}.log"
        tail = _tail(log_path, LOG_LINES_IN_ERRORS) if log_path.exists() else ""
        return (
            f"local deployment {endpoint}/{deployment} failed to start: {error.problem}\n"
            f"--- last lines of {log_path}:\n{readable_log(tail)}"
        )


def _tail(path: Path, lines: int | None) -> str:
    text = path.read_text(errors="replace")
    if lines is None:
        return text
    return "\n".join(text.splitlines()[-lines:]) + ("\n" if text else "")


# ---- environment requirements ------------------------------------------------------------

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$")
_SKIPPED_CONDA = {"python", "pip", "setuptools", "wheel"}


def missing_requirements(requirements: str | Path | Sequence[str]) -> list[str]:
    """Requirements of an environment that the current Python environment does not satisfy.

    `requirements` is a conda file (its path or its YAML text; its `pip:`
    list and its conda packages are checked) or a list of pip requirement
    strings. A requirement counts as met when a distribution of that name is
    installed and, for an exact `==` pin, at that version. URLs, paths and
    pip options are not checked. Conda package names that differ from the
    PyPI name may be reported although an equivalent is installed.
    """
    return [r for r in _requirement_strings(requirements) if not _satisfied(r)]


def _requirement_strings(requirements: str | Path | Sequence[str]) -> list[str]:
    if isinstance(requirements, Path):
        return _from_conda(requirements.read_text())
    if isinstance(requirements, str):
        if "\n" not in requirements and Path(requirements).is_file():
            return _from_conda(Path(requirements).read_text())
        return _from_conda(requirements)
    return [r for r in requirements if _checkable(r)]


def _from_conda(text: str) -> list[str]:
    document = yaml.safe_load(text) or {}
    if not isinstance(document, dict):
        raise ValueError("a conda file is a YAML mapping with a `dependencies` list")
    found: list[str] = []
    for dependency in document.get("dependencies") or []:
        if isinstance(dependency, dict):
            found += [str(r) for r in dependency.get("pip") or [] if _checkable(str(r))]
            continue
        conda = str(dependency).split("::")[-1]  # drop a channel prefix
        match = _NAME.match(conda)
        if match and match.group(1).lower() not in _SKIPPED_CONDA:
            # conda pins with one "=" (numpy=1.26) mean "1.26.*"; keep only the name then.
            rest = match.group(3).strip()
            found.append(match.group(1) + (rest if rest.startswith("==") else ""))
    return found


def _checkable(requirement: str) -> bool:
    text = requirement.strip()
    return bool(text) and not text.startswith(("-", "#", ".", "/")) and "://" not in text


def _satisfied(requirement: str) -> bool:
    match = _NAME.match(requirement.split(";")[0])
    if match is None:
        return True
    try:
        installed = metadata.version(match.group(1))
    except metadata.PackageNotFoundError:
        return False
    pin = re.match(r"^==\s*([^,\s]+)$", match.group(3).strip())
    return pin is None or pin.group(1) == installed
