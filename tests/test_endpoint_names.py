"""One name space for online and batch endpoints (one host name per name), against a real
registry and the real Mongo-compatible server: refusals, release on delete, a race, and
the reservation of names stored by an older registry."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import grpc
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.mongo import Document
from sluice.common.resources import (
    BatchEndpointDoc,
    BatchEndpointSpec,
    Meta,
    OnlineEndpointDoc,
    OnlineEndpointSpec,
    ProvisioningState,
    to_document,
)
from sluice.common.secretbox import SecretBox
from sluice.sdk.client import RegistryClient, SluiceError
from sluice.testing.plugin import RunningService, ServiceStarter
from sluice.testing.wait import wait_for
from sluice.v1 import workspace_pb2 as ws
from sluice.v1 import workspace_pb2_grpc

pytestmark = pytest.mark.integration
NAMES = "endpoint_names"


def taken(name: str, kind: str, holder: str) -> str:
    return (
        f"endpoint name {name!r} is taken by the {kind} endpoint {holder!r}: online and batch "
        "endpoint names share one namespace (one host name); choose another name"
    )


def refusal(call: Callable[[], object]) -> str:
    with pytest.raises(SluiceError) as err:
        call()
    assert err.value.code == "ALREADY_EXISTS", err.value
    return str(err.value)


def missing(call: Callable[[], object]) -> None:
    with pytest.raises(SluiceError) as err:
        call()
    assert err.value.code == "NOT_FOUND", err.value


async def reservations(db: AsyncDatabase[Document]) -> dict[str, dict[str, Any]]:
    return {str(raw["_id"]): dict(raw) async for raw in db[NAMES].find({})}


async def test_a_batch_endpoint_cannot_take_an_online_endpoints_name(
    client: RegistryClient, mongo_db: AsyncDatabase[Document]
) -> None:
    client.create_online_endpoint(OnlineEndpointSpec(name="shared-name"))
    before = client.get_online_endpoint("shared-name").doc
    names_before = await reservations(mongo_db)
    assert names_before == {
        "shared-name": {"_id": "shared-name", "kind": "online", "name": "shared-name"}
    }

    for name in ("shared-name", "Shared-NAME"):
        message = refusal(partial(client.create_batch_endpoint, BatchEndpointSpec(name=name)))
        assert taken(name, "online", "shared-name") in message

    assert client.get_online_endpoint("shared-name").doc == before
    missing(lambda: client.get_batch_endpoint("shared-name"))
    missing(lambda: client.get_batch_endpoint("Shared-NAME"))
    assert client.list_batch_endpoints() == []
    assert await reservations(mongo_db) == names_before


async def test_an_online_endpoint_cannot_take_a_batch_endpoints_name(
    client: RegistryClient, mongo_db: AsyncDatabase[Document]
) -> None:
    client.create_batch_endpoint(BatchEndpointSpec(name="Nightly-Scoring"))
    before = client.get_batch_endpoint("Nightly-Scoring").doc
    names_before = await reservations(mongo_db)

    for name in ("Nightly-Scoring", "nightly-scoring"):
        message = refusal(partial(client.create_online_endpoint, OnlineEndpointSpec(name=name)))
        assert taken(name, "batch", "Nightly-Scoring") in message

    assert client.get_batch_endpoint("Nightly-Scoring").doc == before
    assert client.list_online_endpoints() == []
    assert await reservations(mongo_db) == names_before
    # A same-kind duplicate keeps its own message.
    again = refusal(lambda: client.create_batch_endpoint(BatchEndpointSpec(name="Nightly-Scoring")))
    assert "already exists; use `update`" in again


async def test_a_deleted_endpoints_name_is_free_for_the_other_kind_at_once(
    client: RegistryClient, mongo_db: AsyncDatabase[Document]
) -> None:
    client.create_online_endpoint(OnlineEndpointSpec(name="reused-name"))
    client.delete_online_endpoint("reused-name")
    assert await reservations(mongo_db) == {}
    client.create_batch_endpoint(BatchEndpointSpec(name="reused-name"))
    client.delete_batch_endpoint("reused-name")
    client.create_online_endpoint(OnlineEndpointSpec(name="Reused-Name"))
    assert client.get_online_endpoint("Reused-Name").doc.spec.name == "Reused-Name"
    assert await reservations(mongo_db) == {
        "reused-name": {"_id": "reused-name", "kind": "online", "name": "Reused-Name"}
    }


async def test_the_workspace_put_goes_through_the_reservation(
    client: RegistryClient, registry: RunningService
) -> None:
    """Azure's PUT (create-or-replace, served over REST by the transcoder) creates too."""
    client.create_online_endpoint(OnlineEndpointSpec(name="put-name"))
    assert registry.settings.admin_token
    metadata = (("authorization", f"Bearer {registry.settings.admin_token}"),)
    async with grpc.aio.insecure_channel(registry.address) as channel:
        stub = workspace_pb2_grpc.WorkspaceStub(channel)
        request = ws.PutBatchEndpointRequest(
            name="PUT-name", resource=ws.BatchEndpointTrackedResource()
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PutBatchEndpoint(request, metadata=metadata, timeout=30)
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert taken("PUT-name", "online", "put-name") in str(err.value.details())
    assert client.list_batch_endpoints() == []


async def test_racing_creates_of_both_kinds_cannot_both_win(
    registry: RunningService, mongo_db: AsyncDatabase[Document]
) -> None:
    """Both creates start together, each in its own connection: exactly one commits, the
    other is refused naming the winner, every round."""
    token = registry.settings.admin_token
    assert token

    def create(kind: str, name: str, start: threading.Barrier) -> str:
        with RegistryClient(registry.address, token) as c:
            start.wait(timeout=10)
            try:
                if kind == "online":
                    c.create_online_endpoint(OnlineEndpointSpec(name=name))
                else:
                    c.create_batch_endpoint(BatchEndpointSpec(name=name))
                return "created"
            except SluiceError as exc:
                assert exc.code == "ALREADY_EXISTS", exc
                other = "batch" if kind == "online" else "online"
                assert taken(name, other, name) in str(exc), exc
                return "refused"

    with RegistryClient(registry.address, token) as client:
        for i in range(10):
            name = f"race-{i}"
            start = threading.Barrier(2)
            online, batch = await asyncio.gather(
                asyncio.to_thread(create, "online", name, start),
                asyncio.to_thread(create, "batch", name, start),
            )
            assert {online, batch} == {"created", "refused"}, (online, batch)
            winner = "online" if online == "created" else "batch"
            stored_online = [e.doc.spec.name for e in client.list_online_endpoints()]
            stored_batch = [e.doc.spec.name for e in client.list_batch_endpoints()]
            assert (name in stored_online, name in stored_batch) == (
                winner == "online",
                winner == "batch",
            )
            held = (await reservations(mongo_db))[name]
            assert held == {"_id": name, "kind": winner, "name": name}


def _online(name: str, box: SecretBox) -> Document:
    """An online endpoint as the registry stored it before names were one namespace."""
    doc = OnlineEndpointDoc(
        spec=OnlineEndpointSpec(name=name),
        meta=Meta(created_by="old-registry", provisioning_state=ProvisioningState.succeeded),
        keys={"primary": box.encrypt("k1" * 22), "secondary": box.encrypt("k2" * 22)},
    )
    return {**to_document(doc, name), "_key": name.casefold()}


def _batch(name: str) -> Document:
    doc = BatchEndpointDoc(
        spec=BatchEndpointSpec(name=name),
        meta=Meta(created_by="old-registry", provisioning_state=ProvisioningState.succeeded),
    )
    return {**to_document(doc, name), "_key": name.casefold()}


async def test_names_stored_by_an_older_registry_are_reserved_at_start(
    start_service: ServiceStarter, mongo_db: AsyncDatabase[Document]
) -> None:
    """An old database: endpoints without reservations, one name held by both kinds (kept,
    the online one holds it, a warning says so), one reservation whose endpoint is gone."""
    secret_key = start_service.settings.secret_key
    assert secret_key
    box = SecretBox(secret_key)
    await mongo_db["online_endpoints"].insert_many(
        [_online("legacy-online", box), _online("legacy-both", box)]
    )
    await mongo_db["batch_endpoints"].insert_many([_batch("legacy-batch"), _batch("Legacy-Both")])
    await mongo_db[NAMES].insert_one({"_id": "gone-name", "kind": "batch", "name": "gone-name"})

    registry = start_service("registry")
    token = registry.settings.admin_token
    assert token
    assert await reservations(mongo_db) == {
        "legacy-online": {"_id": "legacy-online", "kind": "online", "name": "legacy-online"},
        "legacy-batch": {"_id": "legacy-batch", "kind": "batch", "name": "legacy-batch"},
        "legacy-both": {"_id": "legacy-both", "kind": "online", "name": "legacy-both"},
        "gone-name": {"_id": "gone-name", "kind": "batch", "name": "gone-name"},
    }
    log = registry.process.log_path
    wait_for(
        lambda: "endpoint_name_in_both_kinds" in log.read_text(),
        "the registry's warning about the name both kinds hold",
        deadline=10,
    )

    with RegistryClient(registry.address, token) as client:
        # Both old endpoints stay readable.
        assert client.get_online_endpoint("legacy-both").doc.meta.created_by == "old-registry"
        assert client.get_batch_endpoint("Legacy-Both").doc.meta.created_by == "old-registry"
        message = refusal(
            lambda: client.create_batch_endpoint(BatchEndpointSpec(name="legacy-online"))
        )
        assert taken("legacy-online", "online", "legacy-online") in message
        message = refusal(
            lambda: client.create_online_endpoint(OnlineEndpointSpec(name="Legacy-Batch"))
        )
        assert taken("Legacy-Batch", "batch", "legacy-batch") in message
        # The reservation of an endpoint that is gone is taken over.
        client.create_online_endpoint(OnlineEndpointSpec(name="gone-name"))
        # Deleting the holder of the shared name hands it to the other kind's endpoint.
        client.delete_online_endpoint("legacy-both")
        message = refusal(
            lambda: client.create_online_endpoint(OnlineEndpointSpec(name="legacy-both"))
        )
        assert taken("legacy-both", "batch", "Legacy-Both") in message
    names = await reservations(mongo_db)
    assert names["legacy-both"] == {"_id": "legacy-both", "kind": "batch", "name": "Legacy-Both"}
    assert names["gone-name"] == {"_id": "gone-name", "kind": "online", "name": "gone-name"}
