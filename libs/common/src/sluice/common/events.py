"""Events: CloudEvents 1.0 envelopes on NATS JetStream.

Every mutating call publishes one event on `<prefix>.<entity>.<verb>`
(default prefix `sluice.events`) into the stream `SLUICE_EVENTS`. Events are
thin: they say *that* something changed (kind, name, version) and consumers
re-read current state, so a lost or repeated event never leaves a stale view.
The envelope is sent in CloudEvents' structured mode (the whole event is the
JSON body) with the event id as `Nats-Msg-Id`, so JetStream drops duplicates.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from faststream.nats import NatsBroker
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field

from sluice.common.log import current_correlation_id, get_logger, new_correlation_id
from sluice.common.settings import Settings

CONTENT_TYPE = "application/cloudevents+json"
log = get_logger(__name__)


class EventEnvelope(BaseModel):
    """A CloudEvents 1.0 event with Sluice's two extensions, `actor` and `correlationid`."""

    model_config = ConfigDict(frozen=True)

    specversion: str = "1.0"
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    source: str
    type: str
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = None
    datacontenttype: str = "application/json"
    actor: str
    correlationid: str
    data: dict[str, Any] = Field(default_factory=dict)


def event_type(entity: str, verb: str) -> str:
    """`endpoint`, `created` -> `sluice.endpoint.created` (verbs are past tense)."""
    return f"sluice.{entity}.{verb}"


class EventPublisher:
    """Publishes envelopes for one service (`source`) and waits for JetStream's ack."""

    def __init__(self, broker: NatsBroker, *, source: str, subject_prefix: str, stream: str):
        self._broker = broker
        self._source = source
        self._prefix = subject_prefix
        self._stream = stream

    def subject_for(self, entity: str, verb: str) -> str:
        return f"{self._prefix}.{entity}.{verb}"

    async def publish(
        self,
        entity: str,
        verb: str,
        *,
        subject: str | None,
        data: dict[str, Any],
        actor: str,
        correlation_id: str | None = None,
    ) -> EventEnvelope:
        envelope = EventEnvelope(
            source=self._source,
            type=event_type(entity, verb),
            subject=subject,
            actor=actor,
            correlationid=correlation_id or current_correlation_id() or new_correlation_id(),
            data=data,
        )
        await self._broker.publish(
            envelope.model_dump_json().encode(),
            self.subject_for(entity, verb),
            headers={"Nats-Msg-Id": envelope.id, "content-type": CONTENT_TYPE},
            correlation_id=envelope.correlationid,
            stream=self._stream,
            timeout=5.0,
        )
        log.debug("event_published", type=envelope.type, subject=subject, event_id=envelope.id)
        return envelope


def create_broker(settings: Settings, *, client_name: str) -> NatsBroker:
    """A FastStream NATS broker for `settings.nats_url`; `await broker.connect()` it."""
    if not settings.nats_url:
        raise RuntimeError("SLUICE_NATS_URL is not set: start the platform with `sluice up`")
    return NatsBroker(settings.nats_url, name=client_name, logger=None)


async def ensure_events_stream(broker: NatsBroker, *, stream: str, subject_prefix: str) -> None:
    """Declare (or update) the JetStream stream that keeps every event; idempotent."""
    config = StreamConfig(
        name=stream,
        subjects=[f"{subject_prefix}.>"],
        storage=StorageType.FILE,
        max_age=30 * 24 * 3600,  # a month of audit history
        duplicate_window=120,
    )
    js = broker.connection.jetstream()
    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(config)
        log.info("events_stream_created", stream=stream, subjects=config.subjects)
        return
    await js.update_stream(config)


def parse_envelope(body: bytes) -> EventEnvelope:
    return EventEnvelope.model_validate_json(body)
