"""The local platform behind `sluice up`, `sluice status` and `sluice down`.

`up` starts, in order and each only once healthy: nats-server (unless
SLUICE_NATS_URL names one), SecantusDB (unless SLUICE_MONGODB_URI names a
MongoDB), every Sluice service installed so far, and Envoy last. What runs
where, and how to start each component again, is written to
<state dir>/platform.json (mode 0600: it holds the services' environment),
which `status` and `down` read, and which the CLI reads to find the registry
and the admin token.

Then `up` leaves a watchdog behind (`python -m sluice.common.supervise`, see
that module): it restarts whatever dies, with back-off, and keeps restart
counts in platform.json. On a partly running platform `up` starts only what
is missing, on the same ports, and never stops what still runs.

A new service is supervised by adding one `ServiceDef` line to SERVICES.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import BaseModel

from sluice.common.components import (
    ENVOY_BOOTSTRAP,
    envoy_spec,
    find_project_file,
    mongo_spec,
    nats_spec,
    python_service_spec,
    render_envoy_bootstrap,
)
from sluice.common.health import check_from_probe
from sluice.common.mongo_auth import MongoUser, with_credentials
from sluice.common.nats_auth import CLI_USER, FOLDER, NatsUsers, Subjects
from sluice.common.pki import PlatformPki
from sluice.common.settings import ServicePorts, Settings, is_loopback, service_env
from sluice.common.supervisor import (
    ComponentError,
    ProcessSpec,
    RunningProcess,
    Supervisor,
    free_port,
    is_alive,
    reap,
    stop_process,
)

STATE_FILE = "platform.json"
GATEWAY_NODE = "sluice-gateway"  # Envoy's node id, the name on its client certificate
DEFAULT_MANAGEMENT_PORT = 8090  # REST API and portal, printed by `sluice up`
# Deaths in a row (none staying up STABLE_AFTER_S) after which a component is in a crash loop.
CRASH_LOOP_FAILURES = 5


@dataclass(frozen=True)
class ServiceDef:
    name: str
    module: str
    port_field: str  # the field of settings.ports holding its gRPC port


# Start order matters only for readiness: producers of state before consumers.
SERVICES = (
    ServiceDef("registry", "sluice.registry", "registry"),
    ServiceDef("provisioner", "sluice.provisioner", "provisioner"),
    ServiceDef("traffic", "sluice.traffic", "xds"),
    ServiceDef("metrics", "sluice.metrics", "metrics"),
    ServiceDef("batch", "sluice.batch", "batch"),
)


def installed_services() -> list[ServiceDef]:
    """The services that exist in this installation (`python -m` can find them)."""
    return [s for s in SERVICES if importlib.util.find_spec(s.module) is not None]


class ComponentSpec(BaseModel):
    """A `ProcessSpec` as stored in platform.json, so any later command can start it again."""

    name: str
    argv: list[str]
    env: dict[str, str] = {}
    cwd: Path | None = None
    ports: list[int] = []
    host: str = "127.0.0.1"
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 10.0
    address: str = ""
    probe: str

    @classmethod
    def of(cls, spec: ProcessSpec) -> ComponentSpec:
        return cls(
            name=spec.name,
            argv=list(spec.argv),
            env=dict(spec.env),
            cwd=spec.cwd,
            ports=list(spec.ports),
            host=spec.host,
            start_timeout_s=spec.start_timeout_s,
            stop_timeout_s=spec.stop_timeout_s,
            address=spec.address,
            probe=spec.health.describe(),
        )

    def process_spec(self) -> ProcessSpec:
        return ProcessSpec(
            name=self.name,
            argv=self.argv,
            health=check_from_probe(self.probe),
            env=self.env,
            cwd=self.cwd,
            ports=self.ports,
            host=self.host,
            start_timeout_s=self.start_timeout_s,
            stop_timeout_s=self.stop_timeout_s,
            address=self.address,
        )


class PlatformState(BaseModel):
    started_at: datetime
    state_dir: Path
    nats_url: str
    mongodb_uri: str
    registry_address: str | None
    envoy_http_port: int | None
    envoy_https_port: int | None
    envoy_admin_socket: Path | None = None  # Envoy's admin interface (mode 0600)
    # The management listener: REST API (/onlineEndpoints...), /openapi.json, /portal/.
    management_url: str | None = None
    domain: str
    processes: list[RunningProcess]
    # service -> its Prometheus scrape URL (http://host:port/metrics)
    prometheus: dict[str, str] = {}
    components: list[ComponentSpec] = []  # how to start each of `processes` again
    supervisor: RunningProcess | None = None  # the watchdog, once it runs

    def spec_of(self, name: str) -> ProcessSpec:
        return next(c for c in self.components if c.name == name).process_spec()


class ComponentStatus(BaseModel):
    name: str
    address: str
    pid: int
    running: bool
    healthy: bool
    log_path: Path
    restarts: int = 0
    crash_loop: bool = False
    last_error: str = ""


def supervisor_running(state: PlatformState) -> bool:
    return state.supervisor is not None and is_alive(state.supervisor)


def _secret_file(path: Path, make: str) -> str:
    """Read a secret from `path`, creating it (mode 0600) with `make` the first time."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(make + "\n")
    return make


class LocalPlatform:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.state_dir = settings.state_dir.absolute()
        self.state_file = self.state_dir / STATE_FILE
        self.pki_folder = (settings.pki_dir or self.state_dir / "pki").absolute()

    # -- state ---------------------------------------------------------------

    def load_state(self) -> PlatformState | None:
        if not self.state_file.exists():
            return None
        return PlatformState.model_validate_json(self.state_file.read_text())

    def save_state(self, state: PlatformState) -> None:
        """Replace platform.json atomically; 0600, as it holds the services' secrets."""
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(state.model_dump_json(indent=2))
        tmp.replace(self.state_file)

    def admin_token(self) -> str:
        return self.settings.admin_token or _secret_file(
            self.state_dir / "admin-token", secrets.token_urlsafe(32)
        )

    def secret_key(self) -> str:
        return self.settings.secret_key or _secret_file(
            self.state_dir / "secret.key", base64.urlsafe_b64encode(os.urandom(32)).decode()
        )

    # -- up / down / status --------------------------------------------------

    def up(
        self,
        on_started: Callable[[RunningProcess], None] | None = None,
        *,
        watchdog: bool = True,
    ) -> tuple[PlatformState, list[str]]:
        """Start what is not running and (unless `watchdog` is False) leave a watchdog behind.

        Returns (state, names started now); an empty list means all was running.
        Never stops a component that runs. `watchdog=False` is for a caller that
        supervises in its own process (`sluice up --foreground`, under systemd).
        """
        existing = self.load_state()
        if existing is not None and not existing.components:
            self._stop(existing.processes)  # written by an older `sluice up`: start clean
            existing = None
        if existing is not None and supervisor_running(existing):
            if not watchdog:
                assert existing.supervisor is not None
                raise ComponentError(
                    "supervisor",
                    f"already runs (pid {existing.supervisor.pid}); `sluice down` first",
                )
            return self._wait_all_running(existing), []
        self.state_dir.mkdir(parents=True, exist_ok=True)
        supervisor = Supervisor(self.state_dir / "logs")
        if existing is None:
            specs, state = self._plan()
            state.components = [ComponentSpec.of(spec) for spec in specs]
            state.processes = supervisor.start_all(specs, on_started=on_started)
            started = [p.name for p in state.processes]
        else:
            state, started = existing, []
            for index, proc in enumerate(state.processes):
                if is_alive(proc):
                    continue
                reap(proc.pid)  # what it left in its group (instances) is adopted, not stopped
                new = proc.successor(supervisor.start(state.spec_of(proc.name)))
                state.processes[index] = new.model_copy(update={"restarts": proc.restarts + 1})
                started.append(proc.name)
                if on_started:
                    on_started(new)
        self.save_state(state)
        return (self._start_watchdog(state) if watchdog else state), started

    def _start_watchdog(self, state: PlatformState) -> PlatformState:
        """Spawn `python -m sluice.common.supervise`, detached; wait until it has registered."""
        log_path = self.state_dir / "logs" / "supervisor.log"
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "sluice.common.supervise"],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "SLUICE_STATE_DIR": str(self.state_dir)},
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            current = self.load_state()
            if current and current.supervisor and current.supervisor.pid == process.pid:
                return current
            if process.poll() is not None:
                break
            time.sleep(0.05)
        raise ComponentError("supervisor", "did not start", log_path)

    def _wait_all_running(self, state: PlatformState, timeout_s: float = 120) -> PlatformState:
        """The watchdog runs: give it time to bring back what is missing."""
        deadline = time.monotonic() + timeout_s
        while not all(is_alive(p) for p in state.processes):
            if time.monotonic() > deadline:
                down = ", ".join(p.name for p in state.processes if not is_alive(p))
                raise ComponentError("supervisor", f"could not restart {down}; see `sluice status`")
            time.sleep(0.2)
            state = self.load_state() or state
        return state

    def down(self) -> list[RunningProcess]:
        """Stop the watchdog, then every process `up` started, newest first; data stays."""
        state = self.load_state()
        if state is None:
            return []
        if state.supervisor is not None:
            stop_process(state.supervisor)  # it leaves the components running
            state = self.load_state() or state  # its last word on pids
        stopped = [p for p in state.processes if is_alive(p)]
        self._stop(state.processes)
        self.state_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> list[ComponentStatus]:
        state = self.load_state()
        if state is None:
            return []
        result = []
        for proc in state.processes:
            running = is_alive(proc)
            healthy = running and bool(proc.probe) and check_from_probe(proc.probe)()
            result.append(
                ComponentStatus(
                    name=proc.name,
                    address=proc.address,
                    pid=proc.pid,
                    running=running,
                    healthy=healthy,
                    log_path=proc.log_path,
                    restarts=proc.restarts,
                    crash_loop=proc.failures >= CRASH_LOOP_FAILURES,
                    last_error=proc.last_error,
                )
            )
        return result

    @staticmethod
    def _stop(processes: list[RunningProcess]) -> None:
        for proc in reversed(processes):
            stop_process(proc)

    # -- the plan ------------------------------------------------------------

    def _port(self, configured: int) -> int:
        return configured or free_port(self.settings.host)

    def _plan(self) -> tuple[list[ProcessSpec], PlatformState]:
        s = self.settings
        host = s.host
        data = self.state_dir / "data"
        specs: list[ProcessSpec] = []

        services = installed_services()
        nats_url = s.nats_url
        users: NatsUsers | None = None  # an external NATS: its authentication is its own
        if not nats_url:
            users = NatsUsers.ensure(
                self.state_dir,
                [svc.name for svc in services],
                Subjects(s.events_subject_prefix, s.events_stream),
            )
            nats = nats_spec(
                host=host,
                port=self._port(s.nats_port),
                monitor_port=self._port(s.nats_monitor_port),
                data_dir=data / "nats",
                config=users.config_file,
                pid_file=users.pid_file,
            )
            specs.append(nats)
            nats_url = nats.address
        base_nats_url: str = nats_url

        def nats_of(user: str) -> str:
            return users.url(base_nats_url, user) if users else base_nats_url

        mongodb_uri = s.mongodb_uri
        if not mongodb_uri:
            (data / "mongodb").mkdir(parents=True, exist_ok=True)
            password = MongoUser(self.state_dir).ensure_provisioned(data / "mongodb", host)
            mongo = mongo_spec(
                host=host,
                port=self._port(s.mongodb_port),
                data_dir=data / "mongodb",
                password=password,
            )
            specs.append(mongo)
            mongodb_uri = with_credentials(mongo.address, password)

        ports = {f: self._port(getattr(s.ports, f)) for f in type(s.ports).model_fields}
        management_port = self._management_port()
        env = self._service_env(nats_url, mongodb_uri, ports, management_port)
        # Each service's own Prometheus /metrics (gRPC calls, reconciles, xDS, event lag).
        prometheus = {svc.name: free_port(host) for svc in services}
        admin_socket = self.state_dir / "envoy" / "admin.sock"  # private: /config_dump shows keys
        # Batch workers run deployment code: a NATS user per job (nats_auth.py), which the
        # batch service adds there.
        own_env = {"batch": {"SLUICE_NATS_AUTH_DIR": str(self.state_dir / FOLDER)} if users else {}}
        for svc in services:
            specs.append(
                python_service_spec(
                    name=svc.name,
                    module=svc.module,
                    host=host,
                    port=ports[svc.port_field],
                    env={
                        **env,
                        "SLUICE_SERVICE_NAME": svc.name,
                        "SLUICE_PROMETHEUS_PORT": str(prometheus[svc.name]),
                        "SLUICE_NATS_URL": nats_of(svc.name),
                        **own_env.get(svc.name, {}),
                    },
                    python=sys.executable,
                )
            )

        bootstrap = self.state_dir / "envoy" / "bootstrap.yaml"
        bootstrap.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = render_envoy_bootstrap(
            find_project_file(ENVOY_BOOTSTRAP),
            admin_socket=admin_socket,
            xds_host=host,
            xds_port=ports["xds"],
            node_id=GATEWAY_NODE,
            tls=PlatformPki(self.pki_folder).client(GATEWAY_NODE),
            # Envoy's stats sink and access log: to the metrics service's ports for Envoy.
            metrics=(host, ports["als"]),
            access_log=(host, ports["access_log"]),
        )
        bootstrap.write_text(yaml.safe_dump(config, sort_keys=False))
        listener_ports = [s.envoy.https_port, management_port] + (
            [s.envoy.http_port] if s.envoy.http_enabled else []
        )
        specs.append(
            envoy_spec(
                host=host,
                admin_socket=admin_socket,
                bootstrap=bootstrap,
                listener_ports=listener_ports,
            )
        )

        has_registry = any(svc.name == "registry" for svc in services)
        listen = os.environ.get("SLUICE_TRAFFIC_LISTEN_HOST") or host
        scheme = "http" if is_loopback(listen) else "https"
        state = PlatformState(
            started_at=datetime.now(UTC),
            state_dir=self.state_dir,
            nats_url=nats_of(CLI_USER),  # the CLI waits for traffic.applied
            mongodb_uri=mongodb_uri,
            registry_address=f"{host}:{ports['registry']}" if has_registry else None,
            envoy_http_port=s.envoy.http_port if s.envoy.http_enabled else None,
            envoy_https_port=s.envoy.https_port,
            envoy_admin_socket=admin_socket,
            # Envoy binds where the traffic controller's listen host says (SLUICE_HOST unless
            # SLUICE_TRAFFIC_LISTEN_HOST); off loopback the listener speaks TLS.
            management_url=f"{scheme}://{host}:{management_port}",
            domain=s.domain,
            processes=[],
            prometheus={name: f"http://{host}:{port}/metrics" for name, port in prometheus.items()},
        )
        return specs, state

    def _management_port(self) -> int:
        """The setting; unset, 8090 when it is free, else any free port (it is printed)."""
        configured = self.settings.envoy.management_port
        if configured is not None:
            return self._port(configured)
        host = self.settings.host
        with socket.socket() as probe:
            try:
                probe.bind((host, DEFAULT_MANAGEMENT_PORT))
            except OSError:
                return free_port(host)
        return DEFAULT_MANAGEMENT_PORT

    def _service_env(
        self, nats_url: str, mongodb_uri: str, ports: dict[str, int], management_port: int
    ) -> dict[str, str]:
        s = self.settings
        resolved = s.model_copy(
            update={
                "envoy": s.envoy.model_copy(update={"management_port": management_port}),
                "state_dir": self.state_dir,
                "nats_url": nats_url,
                "mongodb_uri": mongodb_uri,
                "admin_token": self.admin_token(),
                "secret_key": self.secret_key(),
                "registry_address": f"{s.host}:{ports['registry']}",
                "ports": ServicePorts(**ports),
            }
        )
        return service_env(resolved)
