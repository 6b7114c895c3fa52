"""The registry's guarantees across processes: events survive a NATS outage, one name per host,
no deployment outlives its endpoint."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from faststream.nats import NatsBroker
from nats.js.api import ConsumerConfig, DeliverPolicy
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.components import nats_spec
from sluice.common.events import ensure_events_stream
from sluice.common.events.outbox import OUTBOX
from sluice.common.mongo import Document
from sluice.common.resources import ONLINE_DEPLOYMENTS, ONLINE_ENDPOINTS, OnlineEndpointSpec
from sluice.common.supervisor import Supervisor, free_port, stop_process
from sluice.sdk.client import RegistryClient, SluiceError
from sluice.sdk.specs import load_online_deployment
from sluice.testing.plugin import ServiceStarter
from sluice.testing.wait import wait_for_async

pytestmark = pytest.mark.integration


async def test_a_nats_outage_delays_events_but_fails_no_call(
    start_service: ServiceStarter,
    supervisor: Supervisor,
    mongo_db: AsyncDatabase[Document],
    tmp_path: Path,
) -> None:
    nats = nats_spec(
        host="127.0.0.1", port=free_port(), monitor_port=free_port(), data_dir=tmp_path / "nats"
    )
    process = supervisor.start(nats)
    start_service.settings = start_service.settings.model_copy(update={"nats_url": nats.address})
    registry = start_service("registry")
    settings = registry.settings
    assert settings.admin_token

    async def outbox_empty() -> bool:
        return await mongo_db[OUTBOX].count_documents({}) == 0

    with RegistryClient(registry.address, settings.admin_token, actor="tester") as client:
        client.create_online_endpoint(OnlineEndpointSpec(name="before-outage"))
        await wait_for_async(outbox_empty, "the relay delivers the first event")
        stop_process(process)
        # NATS is gone: the call still succeeds, its event waits in the outbox.
        client.create_online_endpoint(OnlineEndpointSpec(name="during-outage"))
        assert client.get_online_endpoint("during-outage").doc.spec.name == "during-outage"
    pending = await mongo_db[OUTBOX].find().to_list()
    assert [json.loads(p["body"])["data"]["name"] for p in pending] == ["during-outage"]

    supervisor.start(nats)  # same port, same data directory: the stream is still there
    broker = NatsBroker(nats.address, logger=None, drain_timeout=2)
    await broker.connect()
    try:
        await ensure_events_stream(
            broker, stream=settings.events_stream, subject_prefix=settings.events_subject_prefix
        )
        sub = await broker.connection.jetstream().pull_subscribe(
            f"{settings.events_subject_prefix}.>",
            durable="audit",
            stream=settings.events_stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        await wait_for_async(outbox_empty, "the relay delivers the stored event")
        messages = await sub.fetch(10, timeout=5)
        for m in messages:
            await m.ack()
        with pytest.raises(asyncio.TimeoutError):
            await sub.fetch(1, timeout=0.5)
        await sub.unsubscribe()  # else the broker's drain may wait for a late 408 for it
    finally:
        await broker.stop()
    names = [json.loads(m.data)["data"]["name"] for m in messages]
    assert names == ["before-outage", "during-outage"]  # each once, in order


def test_names_differing_only_by_case_are_one_name(client: RegistryClient) -> None:
    client.create_online_endpoint(OnlineEndpointSpec(name="my-endpoint"))
    with pytest.raises(SluiceError) as err:
        client.create_online_endpoint(OnlineEndpointSpec(name="My-Endpoint"))
    assert err.value.code == "ALREADY_EXISTS"
    assert "differs from the existing 'my-endpoint' only by case" in str(err.value)
    assert [e.doc.spec.name for e in client.list_online_endpoints()] == ["my-endpoint"]


async def test_no_deployment_outlives_its_endpoint(
    client: RegistryClient, examples: Path, mongo_db: AsyncDatabase[Document]
) -> None:
    blue = load_online_deployment(examples / "online/blue-deployment.yml", client.upload).spec
    names = [f"race-{i}" for i in range(12)]
    for name in names:
        client.create_online_endpoint(OnlineEndpointSpec(name=name))

    def create(name: str) -> None:
        try:
            client.create_online_deployment(blue.model_copy(update={"endpoint_name": name}))
        except SluiceError as exc:
            assert exc.code == "NOT_FOUND", exc

    def delete(name: str) -> None:
        client.delete_online_endpoint(name)

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(f, n) for n in names for f in (create, delete)]:
            future.result()
    assert await mongo_db[ONLINE_ENDPOINTS].count_documents({}) == 0
    orphans = await mongo_db[ONLINE_DEPLOYMENTS].find().to_list()
    assert orphans == []
