"""The events stream on NATS JetStream: the broker, the stream, publishing and subscribing."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from faststream.nats.subscriber.usecases import PullStreamSubscriber, PushStreamSubscriber
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from sluice.common import tracing
from sluice.common.events.catalogue import EventSpec, PayloadT
from sluice.common.events.envelope import CONTENT_TYPE, CloudEvent
from sluice.common.log import current_correlation_id, get_logger, new_correlation_id
from sluice.common.settings import Settings, user_inbox

log = get_logger(__name__)
PUBLISH_TIMEOUT_S = 5.0
DUPLICATE_WINDOW_S = 120  # JetStream drops a repeated Nats-Msg-Id within this window
MAX_DELIVER = 10  # a message a handler keeps failing on is given up after this many tries
# How long a stopping broker waits for its subscriptions' messages to be handled (nats-py's
# default, 30 s, is past the 10 s a supervisor gives a stopping service before its SIGKILL).
DRAIN_TIMEOUT_S = 5


def create_broker(settings: Settings, *, client_name: str) -> NatsBroker:
    """A FastStream NATS broker for `settings.nats_url`; subscribe, then `await broker.start()`."""
    if not settings.nats_url:
        raise RuntimeError("SLUICE_NATS_URL is not set: start the platform with `sluice up`")
    user = urlsplit(settings.nats_url).username
    # Its own inboxes when it connects as a user of the platform's: that user may receive
    # on no other (nats_auth's permissions).
    prefix = user_inbox(user) if user else "_INBOX"
    broker = NatsBroker(
        settings.nats_url,
        name=client_name,
        logger=None,
        inbox_prefix=prefix,
        drain_timeout=DRAIN_TIMEOUT_S,
    )
    _INBOXES[broker] = f"{prefix}.".encode()
    return broker


# Each broker's inbox prefix: pull subscriptions take it again (FastStream's default is "_INBOX.").
_INBOXES: weakref.WeakKeyDictionary[NatsBroker, bytes] = weakref.WeakKeyDictionary()


def inbox_prefix(broker: NatsBroker) -> bytes:
    """The prefix (with its dot) of `broker`'s inboxes, for its pull subscriptions."""
    return _INBOXES.get(broker, b"_INBOX.")


async def ensure_events_stream(broker: NatsBroker, *, stream: str, subject_prefix: str) -> None:
    """Declare (or update) the JetStream stream that keeps every event; idempotent."""
    config = StreamConfig(
        name=stream,
        subjects=[f"{subject_prefix}.>"],
        storage=StorageType.FILE,
        max_age=30 * 24 * 3600,  # a month of audit history
        duplicate_window=DUPLICATE_WINDOW_S,
    )
    js = broker.connection.jetstream()
    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(config)
        log.info("events_stream_created", stream=stream, subjects=config.subjects)
        return
    await js.update_stream(config)


def filter_subjects(prefix: str, events: Iterable[EventSpec[Any] | str]) -> list[str]:
    """Subjects of `events`; a string is a pattern after the prefix (`instance.>`)."""
    subjects = {e.subject(prefix) if isinstance(e, EventSpec) else f"{prefix}.{e}" for e in events}
    return sorted(subjects)


def decode_cloudevent(msg: NatsMessage) -> Any:
    """Bodies are `application/cloudevents+json`, which FastStream does not decode by itself."""
    return json.loads(msg.body)


def durable_subscriber(
    broker: NatsBroker,
    *,
    stream: str,
    prefix: str,
    durable: str,
    events: Iterable[EventSpec[Any] | str],
    description: str,
) -> PullStreamSubscriber:
    """A durable pull consumer of `events` only: each message is handled once across replicas.

    A handler that raises gets the message again (NACK) up to MAX_DELIVER times.
    """
    return broker.subscriber(
        stream=JStream(stream, declare=False),
        durable=durable,
        config=ConsumerConfig(
            filter_subjects=filter_subjects(prefix, events),
            deliver_policy=DeliverPolicy.NEW,
            max_deliver=MAX_DELIVER,
            ack_wait=30,
        ),
        pull_sub=PullSub(batch_size=16, timeout=1.0),
        inbox_prefix=inbox_prefix(broker),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        decoder=decode_cloudevent,
        title=f"{durable} <- events",
        description=description,
    )


def fanout_subscriber(
    broker: NatsBroker,
    *,
    stream: str,
    prefix: str,
    events: Iterable[EventSpec[Any] | str],
    description: str,
    title: str,
) -> PushStreamSubscriber:
    """An ephemeral push consumer of new `events`: every replica sees every event.

    For services that rebuild their view from MongoDB at start and need no history.
    """
    return broker.subscriber(
        stream=JStream(stream, declare=False),
        config=ConsumerConfig(
            filter_subjects=filter_subjects(prefix, events), deliver_policy=DeliverPolicy.NEW
        ),
        ack_policy=AckPolicy.ACK,
        decoder=decode_cloudevent,
        title=title,
        description=description,
    )


class EventPublisher:
    """Publishes envelopes for one service (`source`) and waits for JetStream's ack.

    State changes go through the outbox instead (events/outbox.py): use this
    directly only for events that describe no stored state (traffic.applied).
    """

    def __init__(self, broker: NatsBroker, *, source: str, subject_prefix: str, stream: str):
        self._broker = broker
        self.source = source
        self.prefix = subject_prefix
        self._stream = stream

    def envelope(
        self,
        spec: EventSpec[PayloadT],
        data: PayloadT,
        *,
        subject: str | None,
        actor: str,
        correlation_id: str | None = None,
    ) -> CloudEvent[PayloadT]:
        if not isinstance(data, spec.payload):
            raise TypeError(f"{spec.type} carries {spec.payload.__name__}, not {type(data)}")
        trace_context = tracing.inject()  # empty unless a recorded span is current
        return CloudEvent[PayloadT](
            source=self.source,
            type=spec.type,
            subject=subject,
            actor=actor,
            correlationid=correlation_id or current_correlation_id() or new_correlation_id(),
            traceparent=trace_context.get("traceparent"),
            tracestate=trace_context.get("tracestate"),
            data=data,
        )

    async def publish(
        self, spec: EventSpec[PayloadT], data: PayloadT, *, subject: str | None, actor: str
    ) -> CloudEvent[PayloadT]:
        event = self.envelope(spec, data, subject=subject, actor=actor)
        await self.send(spec.subject(self.prefix), event.model_dump_json(), event.id)
        return event

    async def send(self, subject: str, body: str, event_id: str) -> None:
        """Publish one serialized envelope; the event id de-duplicates repeats in JetStream."""
        await self._broker.publish(
            body.encode(),
            subject,
            headers={"Nats-Msg-Id": event_id, "content-type": CONTENT_TYPE},
            stream=self._stream,
            timeout=PUBLISH_TIMEOUT_S,
        )
        log.debug("event_published", subject=subject, event_id=event_id)
