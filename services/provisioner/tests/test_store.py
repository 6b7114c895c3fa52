"""The provisioner's writes commit with their events (real MongoDB: transactions)."""

from __future__ import annotations

import json

from faststream.nats import NatsBroker
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.events import EventPublisher, Outbox
from sluice.common.events.catalogue import (
    AUTOSCALE_SCALED,
    DEPLOYMENT_READY,
    INSTANCE_READY,
    INSTANCE_STOPPED,
    AutoscaleScaled,
    DeploymentProgress,
    InstanceReady,
    InstanceStopped,
)
from sluice.common.events.outbox import OUTBOX
from sluice.common.mongo import Document
from sluice.common.resources import (
    DEPLOYMENT_INSTANCES,
    KEEP_SCALE_DECISIONS,
    ONLINE_DEPLOYMENTS,
    SCALE_DECISIONS,
    Instance,
    Meta,
    OnlineDeploymentDoc,
    OnlineDeploymentSpec,
    ProvisioningState,
    to_document,
)
from sluice.provisioner.store import Announce, ProvisionerStore

KEY = "ep/blue"


def store_of(db: AsyncDatabase[Document], broker: NatsBroker) -> ProvisionerStore:
    """No relay runs: the events stay in the outbox, where the test reads them."""
    publisher = EventPublisher(broker, source="sluice/provisioner", subject_prefix="t", stream="T")
    return ProvisionerStore(db, Outbox(db, publisher))


async def outbox_types(db: AsyncDatabase[Document]) -> list[tuple[str, dict[str, object]]]:
    found = []
    async for raw in db[OUTBOX].find().sort("seq", 1):
        body = json.loads(raw["body"])
        found.append((body["type"], body["data"]))
    return found


async def test_a_state_change_commits_with_its_event_and_a_stale_one_with_none(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker
) -> None:
    store = store_of(mongo_db, nats_broker)
    doc = OnlineDeploymentDoc(
        spec=OnlineDeploymentSpec(name="blue", endpoint_name="ep"), meta=Meta(version=2)
    )
    await mongo_db[ONLINE_DEPLOYMENTS].insert_one(to_document(doc, KEY))
    ready = DeploymentProgress(endpoint="ep", name="blue", version=2)

    assert await store.set_state(
        KEY, 2, ProvisioningState.succeeded, "ok", Announce(DEPLOYMENT_READY, ready)
    )
    stored = await mongo_db[ONLINE_DEPLOYMENTS].find_one({"_id": KEY})
    assert stored is not None and stored["meta"]["provisioning_state"] == "Succeeded"
    assert await outbox_types(mongo_db) == [
        ("sluice.deployment.ready", {"endpoint": "ep", "name": "blue", "version": 2})
    ]

    # A result about version 1 (a newer one is stored) changes nothing and announces nothing.
    old = DeploymentProgress(endpoint="ep", name="blue", version=1)
    assert not await store.set_state(
        KEY, 1, ProvisioningState.failed, "late", Announce(DEPLOYMENT_READY, old)
    )
    stored = await mongo_db[ONLINE_DEPLOYMENTS].find_one({"_id": KEY})
    assert stored is not None and stored["meta"]["provisioning_state"] == "Succeeded"
    assert len(await outbox_types(mongo_db)) == 1


async def test_the_instance_list_commits_with_the_instance_events(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker
) -> None:
    store = store_of(mongo_db, nats_broker)
    a = Instance(id="a", address="127.0.0.1:1", ready=True)
    await store.set_instances(
        KEY,
        [a],
        [
            Announce(
                INSTANCE_READY,
                InstanceReady(endpoint="ep", name="blue", instance="a", address=a.address),
            )
        ],
    )
    listed = await mongo_db[DEPLOYMENT_INSTANCES].find_one({"_id": KEY})
    assert listed is not None and [i["id"] for i in listed["instances"]] == ["a"]
    # An event with the list unchanged (None), then the list emptied: the document goes.
    stopped = InstanceStopped(endpoint="ep", name="blue", instance="old", reason="scaled in")
    await store.set_instances(KEY, None, [Announce(INSTANCE_STOPPED, stopped)])
    assert await mongo_db[DEPLOYMENT_INSTANCES].find_one({"_id": KEY}) is not None
    await store.set_instances(KEY, [])
    assert await mongo_db[DEPLOYMENT_INSTANCES].find_one({"_id": KEY}) is None
    assert [t for t, _ in await outbox_types(mongo_db)] == [
        "sluice.instance.ready",
        "sluice.instance.stopped",
    ]


async def test_scale_decisions_commit_with_their_events_most_recent_first_and_capped(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker
) -> None:
    """A deployment's own scale_settings decisions are kept (the last 20) for `sluice
    monitor autoscale show --resource`, in the transaction of their events."""
    store = store_of(mongo_db, nats_broker)

    def scaled(old: int, new: int) -> Announce:
        data = AutoscaleScaled(
            name="scale_settings", endpoint="ep", deployment="blue", profile="", reason="rule",
            rule="CpuUtilizationPercentage target 70%", rule_index=None,
            metric="CpuUtilizationPercentage", value=90.0, old_count=old, new_count=new,
        )  # fmt: skip
        return Announce(AUTOSCALE_SCALED, data)

    await store.set_instances(KEY, None, [scaled(1, 2), scaled(2, 3)])
    for n in range(3, 3 + KEEP_SCALE_DECISIONS):
        await store.set_instances(KEY, None, [scaled(n, n + 1)])
    stored = await mongo_db[SCALE_DECISIONS].find_one({"_id": KEY})
    assert stored is not None
    counts = [(d["old_count"], d["new_count"]) for d in stored["decisions"]]
    last = 3 + KEEP_SCALE_DECISIONS
    assert counts == [(n - 1, n) for n in range(last, last - KEEP_SCALE_DECISIONS, -1)]
    assert stored["decisions"][0]["rule"] == "CpuUtilizationPercentage target 70%"
    assert len(await outbox_types(mongo_db)) == 2 + KEEP_SCALE_DECISIONS
    await store.forget_decisions(KEY)
    assert await mongo_db[SCALE_DECISIONS].find_one({"_id": KEY}) is None
