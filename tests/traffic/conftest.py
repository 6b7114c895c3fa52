"""Fixtures of the traffic controller's integration tests (helpers: sluice.traffic.testing).

The session Envoy (`envoy_gateway`) connects to a fixed xDS port; each test
starts its own `python -m sluice.traffic` there with the test's database and
stream, so a test sees only its own endpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from faststream.nats import NatsBroker
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.mongo import Document
from sluice.common.settings import Settings
from sluice.common.supervisor import Supervisor, free_port
from sluice.common.testing.plugin import EnvoyGateway
from sluice.traffic.testing import GatewayPorts, Traffic, Upstream, World, start_controller


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
