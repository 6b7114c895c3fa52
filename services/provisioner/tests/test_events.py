"""The provisioner's registry-event handler: in FastStream's test broker, then on nats-server."""

from __future__ import annotations

import asyncio

from faststream.nats import NatsBroker, TestNatsBroker

from sluice.common.events import EventPublisher, ensure_events_stream
from sluice.common.events.catalogue import (
    DEPLOYMENT_CREATED,
    DEPLOYMENT_READY,
    ENDPOINT_DELETED,
    TRAFFIC_APPLIED,
    DeploymentChanged,
    DeploymentProgress,
    EndpointChanged,
    TrafficApplied,
)
from sluice.common.settings import Settings
from sluice.provisioner.events import subscribe_registry_events
from sluice.provisioner.routing import RoutingView, subscribe_applied

PREFIX = "sluice.events"
STREAM = "SLUICE_EVENTS"


class Wakeups:
    def __init__(self) -> None:
        self.deployments: list[str] = []
        self.endpoints: list[str] = []
        self.woken = asyncio.Event()

    async def touch(self, key: str) -> None:
        self.deployments.append(key)
        self.woken.set()

    async def touch_endpoint(self, endpoint: str) -> None:
        self.endpoints.append(endpoint)
        self.woken.set()


def _publisher(broker: NatsBroker, *, source: str, prefix: str, stream: str) -> EventPublisher:
    return EventPublisher(broker, source=source, subject_prefix=prefix, stream=stream)


async def test_registry_events_wake_the_named_deployment_or_endpoint() -> None:
    broker = NatsBroker()
    wakeups = Wakeups()
    subscriber = subscribe_registry_events(broker, stream=STREAM, prefix=PREFIX, wakeups=wakeups)
    async with TestNatsBroker(broker) as test_broker:
        registry = _publisher(test_broker, source="sluice/registry", prefix=PREFIX, stream=STREAM)
        await registry.publish(
            DEPLOYMENT_CREATED,
            DeploymentChanged(name="blue", endpoint="ep", version=1),
            subject="ep/blue",
            actor="alice",
        )
        await registry.publish(
            ENDPOINT_DELETED, EndpointChanged(name="ep", version=3), subject="ep", actor="alice"
        )
        assert wakeups.deployments == ["ep/blue"]
        assert wakeups.endpoints == ["ep"]
        handler = subscriber.calls[0].handler
        assert handler.mock is not None
        assert handler.mock.call_count == 2


async def test_the_consumer_is_filtered_to_registry_events() -> None:
    broker = NatsBroker()
    subscriber = subscribe_registry_events(broker, stream=STREAM, prefix=PREFIX, wakeups=Wakeups())
    subjects = set(subscriber.filter_subjects or ())
    assert f"{PREFIX}.deployment.created" in subjects
    assert f"{PREFIX}.endpoint.deleted" in subjects
    # The provisioner's own reports share the `deployment.` entity but are not subscribed.
    assert DEPLOYMENT_READY.subject(PREFIX) not in subjects
    assert not any(s.endswith(".>") or s.endswith(".*") for s in subjects)


async def test_on_a_real_server_own_events_are_not_delivered(sluice_settings: Settings) -> None:
    assert sluice_settings.nats_url
    prefix, stream = sluice_settings.events_subject_prefix, sluice_settings.events_stream
    broker = NatsBroker(sluice_settings.nats_url, logger=None)
    wakeups = Wakeups()
    subscribe_registry_events(broker, stream=stream, prefix=prefix, wakeups=wakeups)
    await broker.connect()
    await ensure_events_stream(broker, stream=stream, subject_prefix=prefix)
    try:
        await broker.start()
        provisioner = _publisher(broker, source="sluice/provisioner", prefix=prefix, stream=stream)
        registry = _publisher(broker, source="sluice/registry", prefix=prefix, stream=stream)
        await provisioner.publish(
            DEPLOYMENT_READY,
            DeploymentProgress(endpoint="ep", name="old", version=1),
            subject="ep/old",
            actor="provisioner",
        )
        await registry.publish(
            DEPLOYMENT_CREATED,
            DeploymentChanged(name="blue", endpoint="ep", version=1),
            subject="ep/blue",
            actor="alice",
        )
        await asyncio.wait_for(wakeups.woken.wait(), timeout=10)
        info = await broker.connection.jetstream().consumer_info(
            stream, "provisioner-registry-events"
        )
        assert info.num_pending == 0
        assert wakeups.deployments == ["ep/blue"]
    finally:
        await broker.connection.jetstream().delete_stream(stream)
        await broker.stop()


async def test_traffic_applied_updates_the_routing_view_and_wakes_what_moved() -> None:
    broker = NatsBroker()
    view, moved = RoutingView(), []

    async def on_change(key: str) -> None:
        moved.append(key)

    subscribe_applied(broker, stream=STREAM, prefix=PREFIX, view=view, on_change=on_change)
    async with TestNatsBroker(broker) as test_broker:
        traffic = _publisher(test_broker, source="sluice/traffic", prefix=PREFIX, stream=STREAM)
        routed = {"ep/blue": ["127.0.0.1:5001"], "ep/green": []}
        applied = TrafficApplied(snapshot="s1", endpoints={"ep": 2}, routed=routed)
        await traffic.publish(TRAFFIC_APPLIED, applied, subject=None, actor="traffic")
        again = TrafficApplied(
            snapshot="s2", endpoints={"ep": 2}, routed={**routed, "ep/green": ["127.0.0.1:5002"]}
        )
        await traffic.publish(TRAFFIC_APPLIED, again, subject=None, actor="traffic")
    assert sorted(moved[:2]) == ["ep/blue", "ep/green"]
    assert moved[2:] == ["ep/green"]
    assert view.routes("ep/green", "127.0.0.1:5002") is True
    assert view.routes("ep/blue", "127.0.0.1:5002") is False
