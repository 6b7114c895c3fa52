"""The autoscaler's evaluation against the real store, with an injected clock: a weekend
recurrence (Pacific time) takes over on Saturday and gives back on Monday; each decision
is stored with the setting and written to the outbox as `sluice.autoscale.scaled`; a
disabled setting decides nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from faststream.nats import NatsBroker
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.autoscale.model import (
    AutoscaleProfile,
    AutoscaleRecurrence,
    AutoscaleSetting,
    validate,
)
from sluice.common.events import EventPublisher, Outbox
from sluice.common.mongo import Document
from sluice.common.resources import ONLINE_DEPLOYMENTS
from sluice.common.settings import Settings
from sluice.metrics.autoscale import Autoscaler, AutoscaleStore
from sluice.metrics.store import MetricsStore

THURSDAY = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)
SATURDAY_IN_LOS_ANGELES = datetime(2026, 11, 28, 18, 0, tzinfo=UTC)
MONDAY = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)


async def test_a_weekend_profile_takes_over_and_gives_back(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker, sluice_settings: Settings
) -> None:
    publisher = EventPublisher(
        nats_broker,
        source="sluice/metrics",
        subject_prefix=sluice_settings.events_subject_prefix,
        stream=sluice_settings.events_stream,
    )
    outbox = Outbox(mongo_db, publisher)
    store = AutoscaleStore(mongo_db, outbox)
    await store.ensure_indexes()
    await mongo_db[ONLINE_DEPLOYMENTS].insert_one(
        {"_id": "shop/blue", "spec": {"name": "blue", "instance_count": 1}}
    )
    setting = AutoscaleSetting(
        name="shop-blue",
        endpoint_name="shop",
        deployment_name="blue",
        profiles=[
            AutoscaleProfile(name="default", min_count=1, default_count=1, max_count=1),
            AutoscaleProfile(
                name="weekend",
                min_count=2,
                default_count=2,
                max_count=2,
                timezone="Pacific Standard Time",
                recurrence=AutoscaleRecurrence(days=["sat", "sun"]),
            ),
        ],
    )
    await store.create(validate(setting))
    autoscaler = Autoscaler(store, MetricsStore(mongo_db), bucket_s=5)

    async def state() -> tuple[int | None, str, list[tuple[str, int, int]]]:
        doc = await store.get("shop-blue")
        assert doc is not None
        decisions = [(d["profile"], d["old_count"], d["new_count"]) for d in doc["decisions"]]
        return doc["state"]["capacity"], doc["state"]["active_profile"], decisions

    await autoscaler.tick(THURSDAY)
    assert await state() == (1, "default", [])  # starts from the deployment's count
    await autoscaler.tick(SATURDAY_IN_LOS_ANGELES)
    assert await state() == (2, "weekend", [("weekend", 1, 2)])
    await autoscaler.tick(MONDAY)
    assert await state() == (1, "default", [("default", 2, 1), ("weekend", 1, 2)])

    events = [json.loads(e["body"]) async for e in mongo_db["outbox"].find().sort("seq", 1)]
    scaled = [e for e in events if e["type"] == "sluice.autoscale.scaled"]
    assert events[0]["type"] == "sluice.autoscale.created"
    assert [
        (e["data"]["profile"], e["data"]["reason"], e["data"]["new_count"]) for e in scaled
    ] == [("weekend", "bounds", 2), ("default", "bounds", 1)]
    assert {e["subject"] for e in scaled} == {"shop/blue"}

    # Switched off: the schedule no longer acts.
    doc = await store.get("shop-blue")
    assert doc is not None
    await store.update(setting.model_copy(update={"enabled": False}), doc["version"])
    await autoscaler.tick(SATURDAY_IN_LOS_ANGELES)
    # No capacity: the deployment's own count applies (and no new decision).
    assert await state() == (None, "", [("default", 2, 1), ("weekend", 1, 2)])
