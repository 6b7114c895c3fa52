"""Events: typed CloudEvents on NATS JetStream, written through a transactional outbox.

The pattern every service follows (docs/events.md lists the events):

1. **Declare** an event in `catalogue.py`: a `Payload` model and an `EventSpec`
   (entity, verb, payload, source). Subject `<prefix>.<entity>.<verb>`, type
   `sluice.<entity>.<verb>`, stream `SLUICE_EVENTS`.
2. **Emit** it with the state change it describes, in one MongoDB transaction::

       async with outbox.transaction() as tx:
           await collection.update_one(..., session=tx.session)
           tx.emit(DEPLOYMENT_UPDATED, DeploymentChanged(...), subject="ep/blue", actor=actor)

   Run `OutboxRelay(outbox, publisher).run()` as a task: it publishes stored
   events to JetStream with the event id as `Nats-Msg-Id`. Events that describe
   no stored state (`traffic.applied`) may use `EventPublisher.publish` directly.
3. **Subscribe** with FastStream, typed, to the subjects you need only::

       @durable_subscriber(broker, stream=..., prefix=..., durable="batch",
                           events=[DEPLOYMENT_DELETED], description="...")
       async def on_deleted(event: CloudEvent[DeploymentChanged]) -> None: ...

   `durable_subscriber` is a durable pull consumer (one delivery across
   replicas, redelivered if the handler raises); `fanout_subscriber` is an
   ephemeral push consumer for views every replica rebuilds itself. Handlers
   must be idempotent: events are hints to re-read MongoDB. Register the
   subscriber in `scripts/asyncapi_app.py` so `docs/events/` documents it
   (`make events-doc`), and test the handler with FastStream's `TestNatsBroker`.
"""

from typing import TYPE_CHECKING, Any

from sluice.common.events.catalogue import ALL, BY_TYPE, EventSpec, Payload
from sluice.common.events.envelope import CONTENT_TYPE, CloudEvent, EventEnvelope, parse_envelope

if TYPE_CHECKING:
    from sluice.common.events.nats import (
        EventPublisher,
        create_broker,
        durable_subscriber,
        ensure_events_stream,
        fanout_subscriber,
    )
    from sluice.common.events.outbox import Outbox, OutboxRelay, Transaction

# The NATS and MongoDB halves load on first use (PEP 562): the event types above are
# pydantic only, and the CLI, which needs just them, starts ~1 s sooner without
# faststream, nats-py (with aiohttp) and pymongo.
_LAZY = {
    "EventPublisher": "nats",
    "create_broker": "nats",
    "durable_subscriber": "nats",
    "ensure_events_stream": "nats",
    "fanout_subscriber": "nats",
    "Outbox": "outbox",
    "OutboxRelay": "outbox",
    "Transaction": "outbox",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)


__all__ = [
    "ALL",
    "BY_TYPE",
    "CONTENT_TYPE",
    "CloudEvent",
    "EventEnvelope",
    "EventPublisher",
    "EventSpec",
    "Outbox",
    "OutboxRelay",
    "Payload",
    "Transaction",
    "create_broker",
    "durable_subscriber",
    "ensure_events_stream",
    "fanout_subscriber",
    "parse_envelope",
]
