"""pytest plugin: real nats-server, SecantusDB and Envoy for a test session.

Loaded for the whole repository through `-p sluice.testing.plugin`.
Servers start lazily, once per session, on free loopback ports; each test
gets its own Mongo database, JetStream stream and subject prefix (uuid
names), so tests never see each other's data. Point the same tests at
external servers with SLUICE_TEST_MONGODB_URI and SLUICE_TEST_NATS_URL.

Tests that use any fixture here that needs a server are marked
`integration` automatically; `pytest -m "not integration"` (`make
test-unit`) runs the rest, and a test that is not marked may not start a
process at all (`no_processes_in_unit_tests`): it fails saying to mark it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet
from faststream.nats import NatsBroker
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.components import (
    ENVOY_BOOTSTRAP,
    envoy_spec,
    find_project_file,
    mongo_spec,
    nats_spec,
    python_service_spec,
    render_envoy_bootstrap,
)
from sluice.common.events import ensure_events_stream
from sluice.common.mongo import Document, create_mongo_client
from sluice.common.pki import PlatformPki
from sluice.common.platform import LocalPlatform, PlatformState
from sluice.common.settings import EnvoySettings, ServicePorts, Settings
from sluice.common.settings import service_env as settings_service_env
from sluice.common.supervisor import (
    ComponentError,
    RunningProcess,
    Supervisor,
    free_port,
    stop_process,
)

SERVER_FIXTURES = {
    "nats_url",
    "mongodb_uri",
    "sluice_settings",
    "mongo_db",
    "nats_broker",
    "envoy_gateway",
    "start_service",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


LOG_TAIL_LINES = 40


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A component that failed to start: the end of its log goes into the report, which
    outlives the test's temporary folder (pytest keeps only the last few)."""
    outcome = yield
    error = call.excinfo.value if call.excinfo is not None else None
    if isinstance(error, ComponentError) and error.log_path is not None:
        try:
            lines = error.log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            lines = [f"(the log could not be read: {exc})"]
        report = outcome.get_result()  # type: ignore[attr-defined]  # pluggy's Result
        tail = "\n".join(lines[-LOG_TAIL_LINES:])
        report.sections.append((f"end of {error.component}'s log ({error.log_path})", tail))


@pytest.fixture(autouse=True)
def no_processes_in_unit_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test not marked `integration` starts no process (no server, no service, no script),
    so `make test-unit` is quick and needs nothing running. Session fixtures that start
    servers were set up before this (and only integration tests use them)."""
    if request.node.get_closest_marker("integration") is not None:
        yield
        return
    name = request.node.nodeid

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError(
            f"{name} started a process but is not marked integration: mark it "
            "(pytestmark = pytest.mark.integration) or use a fixture that does"
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", refuse)
        patch.setattr(os, "fork", refuse)
        patch.setattr(os, "posix_spawn", refuse)
        yield


@contextmanager
def traversable_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder other users may pass through (not list), removed afterwards.

    As root the provisioner runs each deployment as a user of its own, who must reach its
    workspace in the state dir; pytest's own temporary folders are private (and shared by
    every pytest run on the machine), so state dirs live in folders of their own.
    """
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o711)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def session_supervisor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    supervisor = Supervisor(tmp_path_factory.mktemp("server-logs"))
    yield supervisor
    supervisor.stop_all()


@pytest.fixture(scope="session")
def nats_url(session_supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory) -> str:
    external = os.environ.get("SLUICE_TEST_NATS_URL")
    if external:
        return external
    spec = nats_spec(
        host="127.0.0.1",
        port=free_port(),
        monitor_port=free_port(),
        data_dir=tmp_path_factory.mktemp("nats"),
    )
    session_supervisor.start(spec)
    return spec.address


@pytest.fixture(scope="session")
def mongodb_uri(session_supervisor: Supervisor) -> str:
    external = os.environ.get("SLUICE_TEST_MONGODB_URI")
    if external:
        return external
    spec = mongo_spec(host="127.0.0.1", port=free_port(), data_dir=None)
    session_supervisor.start(spec)
    return spec.address


@pytest.fixture
def test_id() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def state_root() -> Iterator[Path]:
    with traversable_dir("sluice-test-") as folder:
        yield folder


@pytest.fixture(scope="session")
def platform_pki(tmp_path_factory: pytest.TempPathFactory) -> PlatformPki:
    """The session's platform CA: the session Envoy and every test's services trust it."""
    return PlatformPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def sluice_settings(
    nats_url: str, mongodb_uri: str, state_root: Path, test_id: str, platform_pki: PlatformPki
) -> Settings:
    """Settings for one test: its own database, stream, subject prefix and state dir."""
    return Settings(
        state_dir=state_root / "state",
        pki_dir=platform_pki.folder,
        nats_url=nats_url,
        mongodb_uri=mongodb_uri,
        mongodb_database=f"t_{test_id}",
        events_stream=f"SLUICE_EVENTS_{test_id}",
        events_subject_prefix=f"t{test_id}.sluice.events",
        admin_token=f"test-admin-{test_id}",
        secret_key=Fernet.generate_key().decode(),
        log_format="json",
    )


@pytest.fixture
async def mongo_db(sluice_settings: Settings) -> AsyncIterator[AsyncDatabase[Document]]:
    assert sluice_settings.mongodb_uri
    client: AsyncMongoClient[Document] = create_mongo_client(
        sluice_settings.mongodb_uri, appname="tests"
    )
    db = client[sluice_settings.mongodb_database]
    yield db
    await client.drop_database(db.name)
    await client.close()


@pytest.fixture
async def nats_broker(sluice_settings: Settings) -> AsyncIterator[NatsBroker]:
    """A connected broker with this test's events stream declared."""
    assert sluice_settings.nats_url
    # A test's pull subscription may leave a late message (the server's 408 for an expired
    # fetch) that nobody takes: the broker's drain at the end would wait 30 s for it.
    broker = NatsBroker(sluice_settings.nats_url, logger=None, drain_timeout=2)
    await broker.connect()
    await ensure_events_stream(
        broker,
        stream=sluice_settings.events_stream,
        subject_prefix=sluice_settings.events_subject_prefix,
    )
    yield broker
    await broker.connection.jetstream().delete_stream(sluice_settings.events_stream)
    await broker.stop()


@dataclass(frozen=True)
class EnvoyGateway:
    """A running Envoy whose ADS cluster points at `xds_port` (serve xDS there), whose
    stats sink streams to `stats_port` and whose access log (when the traffic controller
    turns it on) goes to `access_log_port`: `start_service("metrics", envoy=envoy_gateway)`
    listens on both."""

    admin_url: str
    xds_port: int
    node_id: str
    stats_port: int
    access_log_port: int


@pytest.fixture(scope="session")
def envoy_gateway(
    session_supervisor: Supervisor,
    tmp_path_factory: pytest.TempPathFactory,
    platform_pki: PlatformPki,
) -> EnvoyGateway:
    folder = tmp_path_factory.mktemp("envoy")
    admin_port, xds_port, stats_port, log_port = free_port(), free_port(), free_port(), free_port()
    config = render_envoy_bootstrap(
        find_project_file(ENVOY_BOOTSTRAP),
        admin_port=admin_port,
        xds_host="127.0.0.1",
        xds_port=xds_port,
        node_id="sluice-test-gateway",
        tls=platform_pki.client("sluice-test-gateway"),
        metrics=("127.0.0.1", stats_port),
        access_log=("127.0.0.1", log_port),
    )
    bootstrap = folder / "bootstrap.yaml"
    bootstrap.write_text(yaml.safe_dump(config))
    spec = envoy_spec(
        host="127.0.0.1", admin_port=admin_port, bootstrap=bootstrap, listener_ports=[]
    )
    session_supervisor.start(spec)
    return EnvoyGateway(
        admin_url=spec.address,
        xds_port=xds_port,
        node_id="sluice-test-gateway",
        stats_port=stats_port,
        access_log_port=log_port,
    )


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    """A supervisor for processes one test starts (our services); stops them afterwards."""
    sup = Supervisor(tmp_path / "logs")
    yield sup
    sup.stop_all()


@pytest.fixture(scope="session")
def local_platform() -> Iterator[PlatformState]:
    """The whole platform, started exactly as `sluice up` does, on free ports, for end-to-end tests.

    Shared by the session: tests isolate themselves with unique endpoint names.
    """
    with traversable_dir("sluice-platform-") as state_dir:
        yield from _platform(state_dir)


def _platform(state_dir: Path) -> Iterator[PlatformState]:
    settings = Settings(
        state_dir=state_dir,
        envoy=EnvoySettings(
            http_port=free_port(), https_port=free_port(), management_port=free_port()
        ),
        ports=ServicePorts(registry=free_port()),
    )
    platform = LocalPlatform(settings)
    state, _ = platform.up()
    yield state
    platform.down()


def service_env(settings: Settings) -> dict[str, str]:
    """The environment of a service a test starts: `settings`, logging at debug level."""
    return {**settings_service_env(settings), "SLUICE_LOG_LEVEL": "debug"}


@dataclass(frozen=True)
class RunningService:
    """One of our services started by a test, with the settings it runs with."""

    address: str
    settings: Settings
    process: RunningProcess


class ServiceStarter:
    """Starts our services as real processes (`python -m sluice.<name>`) for one test."""

    def __init__(self, settings: Settings, supervisor: Supervisor):
        self.settings = settings
        self._supervisor = supervisor

    def __call__(
        self, name: str, *, port_field: str | None = None, envoy: EnvoyGateway | None = None
    ) -> RunningService:
        """`envoy`: the Envoy whose stats and access log the metrics service receives (on
        its mutual-TLS ports for Envoy; free ports without)."""
        port = free_port()
        update = {port_field or name: port}
        if name == "metrics":
            update["als"] = envoy.stats_port if envoy else free_port()
            update["access_log"] = envoy.access_log_port if envoy else free_port()
        ports = self.settings.ports.model_copy(update=update)
        self.settings = self.settings.model_copy(update={"ports": ports})
        spec = python_service_spec(
            name=name,
            module=f"sluice.{name}",
            host="127.0.0.1",
            port=port,
            env={**os.environ, **service_env(self.settings), "SLUICE_SERVICE_NAME": name},
            python=sys.executable,
        )
        process = self._supervisor.start(spec)
        return RunningService(address=spec.address, settings=self.settings, process=process)

    def stop(self, service: RunningService) -> None:
        stop_process(service.process)


@pytest.fixture
def start_service(sluice_settings: Settings, supervisor: Supervisor) -> ServiceStarter:
    """`start_service("registry")` runs the registry with this test's settings."""
    return ServiceStarter(sluice_settings, supervisor)
