"""Typed events, the JetStream stream and the outbox, against a real nats-server and SecantusDB."""

from __future__ import annotations

import asyncio
import json

import pytest
from faststream.nats import NatsBroker
from nats.js.api import ConsumerConfig
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.events import (
    ALL,
    CloudEvent,
    EventEnvelope,
    EventPublisher,
    Outbox,
    OutboxRelay,
    parse_envelope,
)
from sluice.common.events.catalogue import (
    ENDPOINT_CREATED,
    TRAFFIC_CHANGED,
    EndpointChanged,
    TrafficChanged,
)
from sluice.common.events.outbox import OUTBOX
from sluice.common.log import bind_correlation_id
from sluice.common.mongo import Document
from sluice.common.settings import Settings


def test_envelope_has_the_cloudevents_attributes() -> None:
    publisher = EventPublisher(
        NatsBroker(), source="sluice/registry", subject_prefix="p", stream="S"
    )
    bind_correlation_id("c1")
    env = publisher.envelope(
        ENDPOINT_CREATED, EndpointChanged(name="e1", version=1), subject="e1", actor="alice"
    )
    doc = json.loads(env.model_dump_json())
    assert doc["specversion"] == "1.0"
    assert {"id", "source", "type", "time", "subject", "datacontenttype"} <= doc.keys()
    assert doc["type"] == "sluice.endpoint.created"
    assert doc["actor"] == "alice"
    assert doc["correlationid"] == "c1"
    assert doc["data"] == {"kind": "endpoint", "name": "e1", "version": 1}
    assert len(doc["id"]) == 32
    assert doc["time"].endswith("Z") or "+00:00" in doc["time"]
    parsed = parse_envelope(env.model_dump_json())
    assert parsed.data == doc["data"]
    typed = CloudEvent[EndpointChanged].model_validate_json(env.model_dump_json())
    assert typed.data == EndpointChanged(name="e1", version=1)


def test_a_payload_of_the_wrong_type_is_refused() -> None:
    publisher = EventPublisher(NatsBroker(), source="s", subject_prefix="p", stream="S")
    with pytest.raises(TypeError, match="carries TrafficChanged"):
        publisher.envelope(
            TRAFFIC_CHANGED, EndpointChanged(name="e1", version=1), subject=None, actor="a"
        )


def test_every_event_type_is_declared_once() -> None:
    types = [spec.type for spec in ALL]
    assert len(types) == len(set(types))
    assert all(t.startswith("sluice.") and t.count(".") >= 2 for t in types)


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


async def _fetch_all(
    nats_broker: NatsBroker, settings: Settings, count: int, durable: str = "audit"
) -> list[EventEnvelope]:
    """Read `count` events with a durable consumer, then check nothing else arrives."""
    js = nats_broker.connection.jetstream()
    sub = await js.pull_subscribe(
        f"{settings.events_subject_prefix}.>",
        durable=durable,
        stream=settings.events_stream,
        config=ConsumerConfig(ack_wait=5),
    )
    try:
        messages = []
        while len(messages) < count:
            messages += await sub.fetch(count - len(messages), timeout=10)
        for m in messages:
            await m.ack()
        # The durable consumer remembers its position: nothing is delivered twice.
        with pytest.raises(asyncio.TimeoutError):
            await sub.fetch(1, timeout=0.3)
    finally:
        await sub.unsubscribe()
    assert all(
        m.headers and m.headers["content-type"] == "application/cloudevents+json" for m in messages
    )
    return [parse_envelope(m.data) for m in messages]


async def test_durable_consumer_receives_published_events_in_order(
    nats_broker: NatsBroker, publisher: EventPublisher, sluice_settings: Settings
) -> None:
    bind_correlation_id("corr-42")
    await publisher.publish(
        ENDPOINT_CREATED, EndpointChanged(name="e1", version=1), subject="e1", actor="bob"
    )
    split = TrafficChanged(name="e1", version=2, traffic={"blue": 100}, mirror_traffic={})
    await publisher.publish(TRAFFIC_CHANGED, split, subject="e1", actor="bob")
    events = await _fetch_all(nats_broker, sluice_settings, 2)
    assert [e.type for e in events] == ["sluice.endpoint.created", "sluice.traffic.changed"]
    assert all(e.actor == "bob" and e.correlationid == "corr-42" for e in events)
    assert events[1].data["traffic"] == {"blue": 100}


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


@pytest.fixture
async def outbox(mongo_db: AsyncDatabase[Document], publisher: EventPublisher) -> Outbox:
    box = Outbox(mongo_db, publisher)
    await box.ensure_indexes()
    return box


async def test_outbox_stores_events_with_the_change_or_not_at_all(
    outbox: Outbox, mongo_db: AsyncDatabase[Document]
) -> None:
    async with outbox.transaction() as tx:
        await mongo_db["things"].insert_one({"_id": "a"}, session=tx.session)
        tx.emit(ENDPOINT_CREATED, EndpointChanged(name="a", version=1), subject="a", actor="t")
    with pytest.raises(RuntimeError, match="changed my mind"):
        async with outbox.transaction() as tx:
            await mongo_db["things"].insert_one({"_id": "b"}, session=tx.session)
            tx.emit(ENDPOINT_CREATED, EndpointChanged(name="b", version=1), subject="b", actor="t")
            raise RuntimeError("changed my mind")
    assert [d["_id"] for d in await mongo_db["things"].find().to_list()] == ["a"]
    pending = await outbox.pending()
    assert [json.loads(p["body"])["data"]["name"] for p in pending] == ["a"]


async def test_relay_publishes_in_write_order_once_and_empties_the_outbox(
    outbox: Outbox,
    publisher: EventPublisher,
    nats_broker: NatsBroker,
    sluice_settings: Settings,
    mongo_db: AsyncDatabase[Document],
) -> None:
    for version in range(1, 6):
        async with outbox.transaction() as tx:
            data = EndpointChanged(name="e", version=version)
            tx.emit(ENDPOINT_CREATED, data, subject="e", actor="t")
    pending = await outbox.pending()
    relay = OutboxRelay(outbox, publisher)
    assert await relay.drain() == 5
    # A relay that died before deleting would publish again: JetStream drops the repeat.
    for raw in pending[:2]:
        await publisher.send(str(raw["subject"]), str(raw["body"]), str(raw["_id"]))
    events = await _fetch_all(nats_broker, sluice_settings, 5)
    assert [e.data["version"] for e in events] == [1, 2, 3, 4, 5]
    assert [e.id for e in events] == [str(p["_id"]) for p in pending]
    assert await mongo_db[OUTBOX].count_documents({}) == 0
