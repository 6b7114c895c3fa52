"""The traffic controller's NATS code: "something changed" in, `traffic.applied/rejected` out.

Every event of the platform is a hint to re-read MongoDB (principle 1): the
handler only marks what to re-read (one endpoint when the event names it,
everything otherwise), so lost, late or repeated events are harmless. The
consumer is an ephemeral JetStream one that starts at new events and is
filtered to what changes routing; the controller needs no history, since it
rebuilds from MongoDB at start and on every resync.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from faststream.nats import NatsBroker
from faststream.nats.subscriber.usecases import PushStreamSubscriber
from opentelemetry import context as otel_context

from sluice.common import tracing
from sluice.common.events import CloudEvent, EventPublisher, Payload, fanout_subscriber
from sluice.common.events.catalogue import (
    ENDPOINT_CREATED,
    ENDPOINT_UPDATED,
    KEYS_REGENERATED,
    TRAFFIC_APPLIED,
    TRAFFIC_CHANGED,
    TRAFFIC_REJECTED,
    TrafficApplied,
    TrafficRejected,
)
from sluice.common.log import get_logger
from sluice.common.prometheus import observe_lag
from sluice.traffic.domain import Owner

log = get_logger(__name__)
ACTOR = "sluice/traffic"
# What changes routing: endpoints, keys, traffic splits, deployments and their instances.
ROUTING_EVENTS = ("endpoint.>", "keys.>", TRAFFIC_CHANGED, "deployment.>", "instance.>")
# Endpoint-level events whose payload `name` is the endpoint itself.
ENDPOINT_ENTITIES = frozenset({"endpoint", "traffic", "keys"})
# Events after which the registry's JWKS may be worth reading again.
JWKS_HINTS = frozenset({ENDPOINT_CREATED.type, ENDPOINT_UPDATED.type, KEYS_REGENERATED.type})


class Mentions(Payload):
    """What the controller reads of any routing event: whom it is about."""

    name: str | None = None
    endpoint: str | None = None


class ChangeSink(Protocol):
    def mark_dirty(
        self,
        endpoint: str | None,
        *,
        refresh_jwks: bool = False,
        trace_context: otel_context.Context | None = None,
    ) -> None: ...


def endpoint_of(event_type: str, data: Mentions) -> str | None:
    """The endpoint an event is about, or None when it could be anything."""
    if data.endpoint is not None:
        return data.endpoint
    entity = event_type.split(".")[1] if event_type.count(".") >= 2 else ""
    return data.name if entity in ENDPOINT_ENTITIES else None


def subscribe_routing_events(
    broker: NatsBroker, *, stream: str, prefix: str, sink: ChangeSink
) -> PushStreamSubscriber:
    """Forward "re-read this endpoint" to the controller for every routing event."""
    subscriber = fanout_subscriber(
        broker,
        stream=stream,
        prefix=prefix,
        events=ROUTING_EVENTS,
        title="traffic <- routing events",
        description="The traffic controller re-reads the endpoint an event names (ephemeral).",
    )

    @subscriber
    async def on_routing_event(event: CloudEvent[Mentions]) -> None:
        observe_lag("traffic", event.time)
        endpoint = endpoint_of(event.type, event.data)
        log.debug("event_received", type=event.type, endpoint=endpoint)
        with tracing.consuming(event, f"traffic: {event.type}") as trace_context:
            sink.mark_dirty(
                endpoint, refresh_jwks=event.type in JWKS_HINTS, trace_context=trace_context
            )

    return subscriber


class Outcomes(Protocol):
    async def applied(
        self,
        snapshot: str,
        endpoints: Mapping[str, int],
        routed: Mapping[str, list[str]],
        clusters: Mapping[str, Owner],
    ) -> None: ...

    async def rejected(
        self, snapshot: str, resource_type: str, error: str, endpoints: Mapping[str, int]
    ) -> None: ...


class NatsOutcomes:
    """Publishes what Envoy did with a snapshot, so the CLI can wait until a change is live.

    Straight to JetStream (no outbox): these describe no stored state, and a
    lost one only makes a waiting CLI fall back to its timeout.
    """

    def __init__(
        self,
        publisher: EventPublisher,
        record: Callable[[str, Mapping[str, int], Mapping[str, Owner]], Awaitable[None]]
        | None = None,
    ):
        self._publisher = publisher
        self._record = record  # also store what is live (TrafficStore.record_applied)

    async def applied(
        self,
        snapshot: str,
        endpoints: Mapping[str, int],
        routed: Mapping[str, list[str]],
        clusters: Mapping[str, Owner],
    ) -> None:
        """`endpoints`: name -> version now live; `routed`: `endpoint/deployment` -> the
        instance addresses Envoy now balances over; `clusters`: Envoy's cluster name -> the
        deployment it serves (recorded only, for the metrics service's Envoy stats)."""
        data = TrafficApplied(snapshot=snapshot, endpoints=dict(endpoints), routed=dict(routed))
        await self._publisher.publish(TRAFFIC_APPLIED, data, subject=None, actor=ACTOR)
        if self._record is not None:
            await self._record(snapshot, endpoints, clusters)

    async def rejected(
        self, snapshot: str, resource_type: str, error: str, endpoints: Mapping[str, int]
    ) -> None:
        data = TrafficRejected(
            snapshot=snapshot, type=resource_type, error=error, endpoints=dict(endpoints)
        )
        await self._publisher.publish(TRAFFIC_REJECTED, data, subject=None, actor=ACTOR)
