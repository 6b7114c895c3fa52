"""A setting's evaluation state (the capacity it decided) belongs to one enabled period of
one deployment: re-enabled, or with its deployment deleted and created again, the setting
starts from the deployment's own `instance_count` (docs/autoscale.md), never from a
count decided before."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from faststream.nats import NatsBroker
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.autoscale.engine import Decision
from sluice.common.autoscale.model import AutoscaleProfile, AutoscaleSetting, validate
from sluice.common.events import EventPublisher, Outbox
from sluice.common.mongo import Document
from sluice.common.resources import ONLINE_DEPLOYMENTS
from sluice.common.settings import Settings
from sluice.metrics.autoscale import Autoscaler, AutoscaleStore
from sluice.metrics.store import MetricsStore

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)
SETTING = validate(
    AutoscaleSetting(
        name="s",
        endpoint_name="shop",
        deployment_name="blue",
        profiles=[AutoscaleProfile(name="default", min_count=1, default_count=2, max_count=10)],
    )
)


def deployment(instance_count: int, created_at: str) -> Document:
    return {
        "_id": "shop/blue",
        "spec": {"name": "blue", "instance_count": instance_count},
        "meta": {"created_at": created_at},
    }


async def scaled_out_setting(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker, sluice_settings: Settings
) -> tuple[AutoscaleStore, Autoscaler]:
    """blue (2 instances) with a setting that has run it at 9 (a past scale-out)."""
    publisher = EventPublisher(
        nats_broker,
        source="sluice/metrics",
        subject_prefix=sluice_settings.events_subject_prefix,
        stream=sluice_settings.events_stream,
    )
    store = AutoscaleStore(mongo_db, Outbox(mongo_db, publisher))
    await store.ensure_indexes()
    await mongo_db[ONLINE_DEPLOYMENTS].insert_one(deployment(2, "2026-11-01T10:00:00.123456Z"))
    await store.create(SETTING)
    autoscaler = Autoscaler(store, MetricsStore(mongo_db), bucket_s=5)
    await autoscaler.tick(NOW)
    assert await capacity(store) == 2  # it starts from the deployment's count
    await mongo_db["autoscale_settings"].update_one({"_id": "s"}, {"$set": {"state.capacity": 9}})
    return store, autoscaler


async def capacity(store: AutoscaleStore) -> int | None:
    doc = await store.get("s")
    assert doc is not None
    return doc["state"]["capacity"]  # type: ignore[no-any-return]


async def test_a_re_enabled_setting_starts_from_the_deployments_count(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker, sluice_settings: Settings
) -> None:
    store, autoscaler = await scaled_out_setting(mongo_db, nats_broker, sluice_settings)
    doc = await store.get("s")
    assert doc is not None
    doc = await store.update(SETTING.model_copy(update={"enabled": False}), doc["version"])
    assert doc is not None
    # Disabled: the deployment's own count applies, so nothing decided before is kept (the
    # provisioner reads state.capacity when it sees autoscale.updated).
    assert doc["state"]["capacity"] is None
    await autoscaler.tick(NOW)
    doc = await store.update(SETTING.model_copy(update={"enabled": True}), doc["version"])
    assert doc is not None
    assert doc["state"]["capacity"] is None
    await autoscaler.tick(NOW)
    assert await capacity(store) == 2  # not the 9 it ran before it was switched off
    doc = await store.get("s")
    assert doc is not None
    assert doc["decisions"] == []  # and no decision: nothing was scaled


async def test_an_edit_of_an_enabled_setting_keeps_its_count(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker, sluice_settings: Settings
) -> None:
    store, autoscaler = await scaled_out_setting(mongo_db, nats_broker, sluice_settings)
    doc = await store.get("s")
    assert doc is not None
    wider = AutoscaleProfile(name="default", min_count=1, default_count=2, max_count=12)
    await store.update(SETTING.model_copy(update={"profiles": [wider]}), doc["version"])
    await autoscaler.tick(NOW)
    assert await capacity(store) == 9


async def test_a_deployment_created_again_starts_from_its_own_count(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker, sluice_settings: Settings
) -> None:
    store, autoscaler = await scaled_out_setting(mongo_db, nats_broker, sluice_settings)
    # Deleted and created again between two ticks, now with 3 instances.
    await mongo_db[ONLINE_DEPLOYMENTS].delete_one({"_id": "shop/blue"})
    await mongo_db[ONLINE_DEPLOYMENTS].insert_one(deployment(3, "2026-11-26T19:59:58.5Z"))
    await autoscaler.tick(NOW)
    assert await capacity(store) == 3
    doc = await store.get("s")
    assert doc is not None
    assert doc["state"]["deployment_created_at"] == "2026-11-26T19:59:58.5Z"


async def test_a_deleted_deployment_leaves_its_setting_without_a_count(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker, sluice_settings: Settings
) -> None:
    store, autoscaler = await scaled_out_setting(mongo_db, nats_broker, sluice_settings)
    await mongo_db[ONLINE_DEPLOYMENTS].delete_one({"_id": "shop/blue"})
    await autoscaler.tick(NOW)
    assert await capacity(store) is None  # the setting stays (as on Azure), its count not
    await mongo_db[ONLINE_DEPLOYMENTS].insert_one(deployment(4, "2026-11-26T20:00:30Z"))
    await autoscaler.tick(NOW)
    assert await capacity(store) == 4


async def test_a_decision_is_not_written_onto_a_setting_edited_since_the_tick_read_it(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker, sluice_settings: Settings
) -> None:
    store, _ = await scaled_out_setting(mongo_db, nats_broker, sluice_settings)
    read = await store.get("s")  # what a tick read
    assert read is not None
    lower = AutoscaleProfile(name="default", min_count=1, default_count=2, max_count=3)
    await store.update(SETTING.model_copy(update={"profiles": [lower]}), read["version"])
    decided = Decision(old_count=9, new_count=10, profile="default", reason="rule")
    await store.record(read, decided, NOW, NOW.timestamp(), "2026-11-01T10:00:00.123456Z")
    doc = await store.get("s")
    assert doc is not None
    assert doc["state"]["capacity"] == 9 and doc["decisions"] == []  # 10 > the new max 3
