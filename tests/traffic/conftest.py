"""Fixtures of the traffic controller's integration tests (helpers: sluice.testing.traffic).

The session Envoy (`envoy_gateway`) connects to a fixed xDS port; each test
starts its own `python -m sluice.traffic` there with the test's database and
stream, so a test sees only its own endpoints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from faststream.nats import NatsBroker
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.events import EventEnvelope, parse_envelope
from sluice.common.mongo import Document
from sluice.common.settings import Settings
from sluice.common.supervisor import Supervisor, free_port
from sluice.testing.cli import Cli
from sluice.testing.plugin import EnvoyGateway, RunningService
from sluice.testing.traffic import GatewayPorts, Traffic, Upstream, World, start_controller


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`cli.json("monitor", "autoscale", "list")`: the CLI in this process."""
    return Cli(capsys, monkeypatch)


@pytest.fixture
def upstreams() -> Iterator[Callable[[str], Upstream]]:
    """`upstreams("blue")` starts a model-server stand-in answering as "blue"."""
    made: list[Upstream] = []

    def make(name: str) -> Upstream:
        made.append(Upstream(name))
        return made[-1]

    yield make
    for upstream in made:
        upstream.close()


@pytest.fixture(scope="session")
def gateway_ports() -> GatewayPorts:
    """The listener ports every test's controller configures on the session Envoy."""
    return GatewayPorts(http=free_port(), https=free_port())


@pytest.fixture
def traffic(
    sluice_settings: Settings,
    supervisor: Supervisor,
    envoy_gateway: EnvoyGateway,
    gateway_ports: GatewayPorts,
    nats_broker: NatsBroker,
) -> Traffic:
    """The traffic controller of this test (its events stream is declared first)."""
    return start_controller(sluice_settings, supervisor, envoy_gateway, gateway_ports)


@pytest.fixture
def world(
    mongo_db: AsyncDatabase[Document], sluice_settings: Settings, nats_broker: NatsBroker
) -> World:
    return World(mongo_db, sluice_settings, nats_broker)


@pytest.fixture
def traffic_with_registry(
    registry: RunningService,
    supervisor: Supervisor,
    envoy_gateway: EnvoyGateway,
    gateway_ports: GatewayPorts,
    nats_broker: NatsBroker,
) -> Traffic:
    """A traffic controller on a running registry's database (the JWKS is read there)."""
    return start_controller(registry.settings, supervisor, envoy_gateway, gateway_ports)


@pytest.fixture
async def traffic_events(
    nats_broker: NatsBroker, sluice_settings: Settings
) -> AsyncIterator[list[EventEnvelope]]:
    """Every `traffic.*` event of this test, as it arrives."""
    seen: list[EventEnvelope] = []

    async def collect(msg: Any) -> None:
        seen.append(parse_envelope(msg.data))

    sub = await nats_broker.connection.subscribe(
        f"{sluice_settings.events_subject_prefix}.traffic.>", cb=collect
    )
    yield seen
    await sub.unsubscribe()
