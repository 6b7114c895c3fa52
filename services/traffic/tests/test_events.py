"""The controller's routing-event handler in FastStream's test broker (no servers)."""

from __future__ import annotations

from faststream.nats import NatsBroker, TestNatsBroker

from sluice.common.events import EventPublisher
from sluice.common.events.catalogue import (
    DEPLOYMENT_READY,
    KEYS_REGENERATED,
    TRAFFIC_APPLIED,
    DeploymentProgress,
    KeysRegenerated,
    TrafficApplied,
)
from sluice.traffic.events import subscribe_routing_events

PREFIX = "sluice.events"
STREAM = "SLUICE_EVENTS"


class Sink:
    def __init__(self) -> None:
        self.marked: list[tuple[str | None, bool]] = []

    def mark_dirty(
        self, endpoint: str | None, *, refresh_jwks: bool = False, trace_context: object = None
    ) -> None:
        self.marked.append((endpoint, refresh_jwks))


async def test_routing_events_mark_their_endpoint_and_key_events_refresh_the_jwks() -> None:
    broker = NatsBroker()
    sink = Sink()
    subscriber = subscribe_routing_events(broker, stream=STREAM, prefix=PREFIX, sink=sink)
    async with TestNatsBroker(broker) as test_broker:
        events = EventPublisher(test_broker, source="t", subject_prefix=PREFIX, stream=STREAM)
        progress = DeploymentProgress(endpoint="shop", name="blue", version=2)
        await events.publish(DEPLOYMENT_READY, progress, subject="shop/blue", actor="p")
        keys = KeysRegenerated(name="shop", version=3, key_type="primary")
        await events.publish(KEYS_REGENERATED, keys, subject="shop", actor="alice")
        # Its own output is not subscribed: publishing it reaches no handler.
        applied = TrafficApplied(snapshot="s1", endpoints={"shop": 3})
        await events.publish(TRAFFIC_APPLIED, applied, subject=None, actor="traffic")
    assert sink.marked == [("shop", False), ("shop", True)]
    assert TRAFFIC_APPLIED.subject(PREFIX) not in subscriber.filter_subjects
