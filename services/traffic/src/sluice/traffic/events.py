"""The traffic controller's NATS code: "something changed" in, `traffic.applied/rejected` out.

Every event of the platform is a hint to re-read MongoDB (principle 1): the
handler only marks what to re-read (one endpoint when the event names it,
everything otherwise), so lost, late or repeated events are harmless. The
subscription is a plain core-NATS one on `<prefix>.>`: the controller needs
no history, since it rebuilds from MongoDB at start and on every resync.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from faststream.nats import NatsBroker
from pydantic import ValidationError

from sluice.common.events import EventPublisher, parse_envelope
from sluice.common.log import get_logger
from sluice.common.prometheus import observe_lag

log = get_logger(__name__)
ACTOR = "sluice/traffic"
# Endpoint-level events whose payload `name` is the endpoint itself.
ENDPOINT_ENTITIES = frozenset({"endpoint", "traffic", "keys"})
# Our own output: never a reason to rebuild.
OWN = frozenset({"sluice.traffic.applied", "sluice.traffic.rejected"})
# Events after which the registry's JWKS may be worth fetching again.
JWKS_HINTS = frozenset(
    {"sluice.endpoint.created", "sluice.endpoint.updated", "sluice.keys.regenerated"}
)


class ChangeSink(Protocol):
    def mark_dirty(self, endpoint: str | None, *, refresh_jwks: bool = False) -> None: ...


def endpoint_of(event_type: str, data: Mapping[str, Any]) -> str | None:
    """The endpoint an event is about, or None when it could be anything."""
    if isinstance(data.get("endpoint"), str):
        return str(data["endpoint"])
    entity = event_type.split(".")[1] if event_type.count(".") >= 2 else ""
    if entity in ENDPOINT_ENTITIES and isinstance(data.get("name"), str):
        return str(data["name"])
    return None


class EventListener:
    """Subscribes to every platform event and forwards "re-read this" to the controller."""

    def __init__(self, broker: NatsBroker, subject_prefix: str, sink: ChangeSink):
        self._broker = broker
        self._subject = f"{subject_prefix}.>"
        self._sink = sink
        self._subscription: Any = None

    async def start(self) -> None:
        self._subscription = await self._broker.connection.subscribe(self._subject, cb=self._on_msg)
        log.info("events_subscribed", subject=self._subject)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()

    async def _on_msg(self, msg: Any) -> None:
        try:
            event = parse_envelope(msg.data)
        except ValidationError:
            # Not one of ours (or garbled): the periodic resync covers whatever it meant.
            log.warning("event_unreadable", subject=msg.subject)
            return
        if event.type in OWN:
            return
        observe_lag("traffic", event.time)
        endpoint = endpoint_of(event.type, event.data)
        log.debug("event_received", type=event.type, endpoint=endpoint)
        self._sink.mark_dirty(endpoint, refresh_jwks=event.type in JWKS_HINTS)


class Outcomes(Protocol):
    async def applied(
        self, snapshot: str, endpoints: Mapping[str, int], routed: Mapping[str, list[str]]
    ) -> None: ...

    async def rejected(
        self, snapshot: str, resource_type: str, error: str, endpoints: Mapping[str, int]
    ) -> None: ...


class NatsOutcomes:
    """Publishes what Envoy did with a snapshot, so the CLI can wait until a change is live."""

    def __init__(self, publisher: EventPublisher):
        self._publisher = publisher

    async def applied(
        self, snapshot: str, endpoints: Mapping[str, int], routed: Mapping[str, list[str]]
    ) -> None:
        """`endpoints`: name -> version now live; `routed`: `endpoint/deployment` -> the
        instance addresses Envoy now balances over."""
        await self._publisher.publish(
            "traffic",
            "applied",
            subject=None,
            data={"snapshot": snapshot, "endpoints": dict(endpoints), "routed": dict(routed)},
            actor=ACTOR,
        )

    async def rejected(
        self, snapshot: str, resource_type: str, error: str, endpoints: Mapping[str, int]
    ) -> None:
        await self._publisher.publish(
            "traffic",
            "rejected",
            subject=None,
            data={
                "snapshot": snapshot,
                "type": resource_type,
                "error": error,
                "endpoints": dict(endpoints),
            },
            actor=ACTOR,
        )
