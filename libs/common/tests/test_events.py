"""The event envelope and the JetStream stream, against a real nats-server."""

from __future__ import annotations

import asyncio
import json

import pytest
from faststream.nats import NatsBroker
from nats.js.api import ConsumerConfig

from sluice.common.events import EventEnvelope, EventPublisher, event_type, parse_envelope
from sluice.common.log import bind_correlation_id
from sluice.common.settings import Settings


def test_envelope_has_the_cloudevents_attributes() -> None:
    env = EventEnvelope(
        source="sluice/registry",
        type=event_type("endpoint", "created"),
        subject="endpoint/e1",
        actor="alice",
        correlationid="c1",
        data={"kind": "online_endpoint", "name": "e1", "version": 1},
    )
    doc = json.loads(env.model_dump_json())
    assert doc["specversion"] == "1.0"
    assert {"id", "source", "type", "time", "subject", "datacontenttype"} <= doc.keys()
    assert doc["type"] == "sluice.endpoint.created"
    assert doc["actor"] == "alice"
    assert doc["correlationid"] == "c1"
    assert len(doc["id"]) == 32
    assert doc["time"].endswith("Z") or "+00:00" in doc["time"]
    assert parse_envelope(env.model_dump_json().encode()) == env


@pytest.fixture
def publisher(nats_broker: NatsBroker, sluice_settings: Settings) -> EventPublisher:
    return EventPublisher(
        nats_broker,
        source="sluice/tests",
        subject_prefix=sluice_settings.events_subject_prefix,
        stream=sluice_settings.events_stream,
    )


async def test_stream_covers_the_event_subjects(
    nats_broker: NatsBroker, sluice_settings: Settings
) -> None:
    info = await nats_broker.connection.jetstream().stream_info(sluice_settings.events_stream)
    assert info.config.subjects == [f"{sluice_settings.events_subject_prefix}.>"]


async def test_durable_consumer_receives_published_events_in_order(
    nats_broker: NatsBroker, publisher: EventPublisher, sluice_settings: Settings
) -> None:
    bind_correlation_id("corr-42")
    await publisher.publish(
        "endpoint", "created", subject="endpoint/e1", data={"name": "e1", "version": 1}, actor="bob"
    )
    await publisher.publish(
        "traffic", "changed", subject="endpoint/e1", data={"name": "e1", "version": 2}, actor="bob"
    )
    js = nats_broker.connection.jetstream()
    sub = await js.pull_subscribe(
        f"{sluice_settings.events_subject_prefix}.>",
        durable="audit",
        stream=sluice_settings.events_stream,
        config=ConsumerConfig(ack_wait=5),
    )
    try:
        messages = await sub.fetch(2, timeout=5)
        for m in messages:
            await m.ack()
        # The durable consumer remembers its position: nothing is delivered twice.
        with pytest.raises(asyncio.TimeoutError):
            await sub.fetch(1, timeout=0.3)
    finally:
        await sub.unsubscribe()
    events = [parse_envelope(m.data) for m in messages]
    assert [e.type for e in events] == ["sluice.endpoint.created", "sluice.traffic.changed"]
    assert [m.subject for m in messages] == [
        f"{sluice_settings.events_subject_prefix}.endpoint.created",
        f"{sluice_settings.events_subject_prefix}.traffic.changed",
    ]
    assert all(e.actor == "bob" and e.correlationid == "corr-42" for e in events)
    assert messages[0].headers is not None
    assert messages[0].headers["content-type"] == "application/cloudevents+json"


async def test_a_repeated_event_id_is_stored_once(
    nats_broker: NatsBroker, sluice_settings: Settings
) -> None:
    env = EventEnvelope(source="t", type="sluice.x.y", actor="a", correlationid="c")
    subject = f"{sluice_settings.events_subject_prefix}.x.y"
    for _ in range(2):
        await nats_broker.publish(
            env.model_dump_json().encode(),
            subject,
            headers={"Nats-Msg-Id": env.id},
            stream=sluice_settings.events_stream,
        )
    info = await nats_broker.connection.jetstream().stream_info(sluice_settings.events_stream)
    assert info.state.messages == 1
