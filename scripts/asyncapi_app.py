"""Every event channel of Sluice for `faststream docs gen` (docs/events/asyncapi.*).

Publishers: one per event in `sluice.common.events.catalogue`, with its typed
envelope. Subscribers: the real subscription functions of each service,
registered here with handlers that do nothing (only their shape matters).
A new service that subscribes adds its `subscribe_*` call below.
"""

from __future__ import annotations

from typing import Any

from faststream import FastStream
from faststream.nats import JStream, NatsBroker
from faststream.specification import AsyncAPI

from sluice.batch.events import subscribe_deployment_events
from sluice.common.events import ALL, CloudEvent
from sluice.common.events.catalogue import TrafficApplied, TrafficRejected
from sluice.common.settings import Settings
from sluice.provisioner.autoscale_counts import subscribe_autoscale
from sluice.provisioner.events import subscribe_registry_events
from sluice.provisioner.routing import RoutingView, subscribe_applied
from sluice.sdk.applied import subscribe_gateway_outcome
from sluice.traffic.events import subscribe_routing_events

# The defaults, not this shell's SLUICE_* variables: the document must not depend on them.
PREFIX = str(Settings.model_fields["events_subject_prefix"].default)
STREAM = str(Settings.model_fields["events_stream"].default)


class _Nothing:
    async def touch(self, key: str) -> None: ...

    async def touch_endpoint(self, endpoint: str) -> None: ...

    def mark_dirty(
        self, endpoint: str | None, *, refresh_jwks: bool = False, trace_context: Any = None
    ) -> None: ...

    async def routing_changed(self, key: str) -> None: ...

    async def autoscaled(self, endpoint: str, deployment: str) -> None: ...
    def warm_soon(self, endpoint: str, deployment: str) -> None: ...

    async def applied(self, event: CloudEvent[TrafficApplied]) -> None: ...

    async def rejected(self, event: CloudEvent[TrafficRejected]) -> None: ...


def build() -> FastStream:
    broker = NatsBroker("nats://localhost:4222", logger=None)
    for event in ALL:
        broker.publisher(
            event.subject(PREFIX),
            stream=JStream(STREAM, declare=False),
            title=f"{event.source} -> {event.entity}.{event.verb}",
            description=f"{event.type}: {event.description}.",
            schema=CloudEvent[event.payload],  # type: ignore[name-defined]
        )
    nothing = _Nothing()
    subscribe_registry_events(broker, stream=STREAM, prefix=PREFIX, wakeups=nothing)
    subscribe_applied(
        broker,
        stream=STREAM,
        prefix=PREFIX,
        view=RoutingView(),
        on_change=nothing.routing_changed,
    )
    subscribe_routing_events(broker, stream=STREAM, prefix=PREFIX, sink=nothing)
    subscribe_autoscale(broker, stream=STREAM, prefix=PREFIX, on_change=nothing.autoscaled)
    subscribe_deployment_events(broker, stream=STREAM, prefix=PREFIX, warmer=nothing)
    subscribe_gateway_outcome(
        broker, PREFIX, on_applied=nothing.applied, on_rejected=nothing.rejected
    )
    spec = AsyncAPI(
        title="Sluice events",
        version="1",
        description=(
            "CloudEvents 1.0 (structured mode, content-type application/cloudevents+json) "
            f"on NATS JetStream, stream {STREAM}, subjects {PREFIX}.<entity>.<verb>. "
            "The event id is also the Nats-Msg-Id header. See docs/events.md."
        ),
    )
    return FastStream(broker, specification=spec, logger=None)
