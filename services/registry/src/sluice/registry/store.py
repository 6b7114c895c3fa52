"""The registry's MongoDB code: one small typed wrapper per collection.

Writes are conditional on `meta.version` (optimistic concurrency): a replace
names the version it was computed from and fails with `Conflict` if the
stored one moved on. Names are `_id`s, so uniqueness is the database's job;
`endpoint_names` makes an endpoint name unique across online and batch endpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from sluice.common.assets import ASSETS, AssetDoc
from sluice.common.events import Outbox, Transaction
from sluice.common.log import get_logger
from sluice.common.mongo import Document
from sluice.common.resources import (
    BATCH_DEPLOYMENTS,
    BATCH_ENDPOINTS,
    BATCH_JOBS,
    DEPLOYMENT_INSTANCES,
    GATEWAY_APPLIED,
    JWKS,
    JWKS_ID,
    ONLINE_DEPLOYMENTS,
    ONLINE_ENDPOINTS,
    BatchDeploymentDoc,
    BatchEndpointDoc,
    DeploymentInstancesDoc,
    OnlineDeployment,
    OnlineDeploymentDoc,
    OnlineEndpointDoc,
    deployment_id,
    from_document,
    to_document,
)
from sluice.registry.domain import AlreadyExists, Conflict, EndpointKind, name_taken

log = get_logger(__name__)
SIGNING_KEYS = "signing_keys"
KEY = "_key"  # the case-folded `_id`, unique: names differing only by case are one name
# {_id: <case-folded name>, kind: "online" | "batch", name: <as written>}: who holds a name.
ENDPOINT_NAMES = "endpoint_names"
ENDPOINTS = {EndpointKind.online: ONLINE_ENDPOINTS, EndpointKind.batch: BATCH_ENDPOINTS}

DocT = TypeVar("DocT", bound=BaseModel)


@dataclass(frozen=True)
class Page(Generic[DocT]):
    items: list[DocT]
    next_token: str  # empty on the last page


class Collection(Generic[DocT]):
    """Typed access to one collection of resource documents, keyed by `_id`."""

    def __init__(
        self,
        collection: AsyncCollection[Document],
        model: type[DocT],
        kind: str,
        session: AsyncClientSession | None = None,
    ):
        self._c = collection
        self._model = model
        self.kind = kind
        self._s = session  # set: every call is part of that session's transaction

    def _load(self, raw: Mapping[str, Any]) -> DocT:
        return from_document(self._model, raw)

    def _document(self, _id: str, doc: DocT) -> Document:
        return {**to_document(doc, _id), KEY: _id.casefold()}

    async def insert(self, _id: str, doc: DocT) -> None:
        """Store a new resource; refused if its name, ignoring case, is taken.

        Host names are case-insensitive, so `My-Endpoint` would take over
        `my-endpoint`'s scoring host: the unique index on `_key` refuses it.
        """
        try:
            await self._c.insert_one(self._document(_id, doc), session=self._s)
        except DuplicateKeyError as exc:
            # Outside the transaction: the server aborted it on the duplicate key.
            taken = await self._c.find_one({KEY: _id.casefold()}, {"_id": 1})
            if taken is None or taken["_id"] == _id:
                raise AlreadyExists(
                    f"{self.kind} {_id!r} already exists; use `update` to change it"
                ) from exc
            raise AlreadyExists(
                f"{self.kind} {_id!r} differs from the existing {taken['_id']!r} only by case; "
                "names are case-insensitive (they are host names): choose another name"
            ) from exc

    async def touch(self, _id: str) -> bool:
        """Write the document without changing it, so a concurrent delete conflicts with us."""
        result = await self._c.update_one({"_id": _id}, {"$inc": {"_touched": 1}}, session=self._s)
        return result.matched_count == 1

    async def get(self, _id: str) -> DocT | None:
        raw = await self._c.find_one({"_id": _id}, session=self._s)
        return None if raw is None else self._load(raw)

    async def replace(self, _id: str, doc: DocT, *, expected_version: int) -> None:
        """Store `doc` if the stored version is still `expected_version`."""
        result = await self._c.replace_one(
            {"_id": _id, "meta.version": expected_version},
            self._document(_id, doc),
            session=self._s,
        )
        if result.matched_count == 0:
            current = await self._c.find_one({"_id": _id}, {"meta.version": 1}, session=self._s)
            if current is None:
                raise Conflict(f"{self.kind} {_id!r} was deleted meanwhile")
            raise Conflict(
                f"{self.kind} {_id!r} changed meanwhile (version {expected_version} expected, "
                f"{current['meta']['version']} stored); read it again and retry"
            )

    async def delete(self, _id: str) -> bool:
        result = await self._c.delete_one({"_id": _id}, session=self._s)
        return result.deleted_count == 1

    async def page(
        self, *, size: int, after: str, where: Mapping[str, Any] | None = None
    ) -> Page[DocT]:
        """Up to `size` documents with `_id` > `after`, in `_id` order."""
        query: dict[str, Any] = dict(where or {})
        if after:
            query["_id"] = {"$gt": after}
        cursor = self._c.find(query, session=self._s).sort("_id", ASCENDING).limit(size + 1)
        raws = await cursor.to_list()
        items = [self._load(raw) for raw in raws[:size]]
        next_token = str(raws[size - 1]["_id"]) if len(raws) > size else ""
        return Page(items=items, next_token=next_token)

    async def find(self, where: Mapping[str, Any]) -> list[DocT]:
        raws = await self._c.find(dict(where), session=self._s).sort("_id", ASCENDING).to_list()
        return [self._load(raw) for raw in raws]

    async def delete_many(self, where: Mapping[str, Any]) -> None:
        await self._c.delete_many(dict(where), session=self._s)


class Collections:
    """The registry's resource collections (and assets), optionally inside one transaction."""

    def __init__(self, db: AsyncDatabase[Document], session: AsyncClientSession | None = None):
        self.online_endpoints = Collection(
            db[ONLINE_ENDPOINTS], OnlineEndpointDoc, "endpoint", session
        )
        self.online_deployments = Collection(
            db[ONLINE_DEPLOYMENTS], OnlineDeploymentDoc, "deployment", session
        )
        self.batch_endpoints = Collection(
            db[BATCH_ENDPOINTS], BatchEndpointDoc, "batch endpoint", session
        )
        self.batch_deployments = Collection(
            db[BATCH_DEPLOYMENTS], BatchDeploymentDoc, "batch deployment", session
        )
        self.assets = Collection(db[ASSETS], AssetDoc, "asset", session)


def _reservation(name: str, kind: EndpointKind) -> Document:
    return {"_id": name.casefold(), "kind": kind.value, "name": name}


class EndpointNames:
    """`endpoint_names`: which endpoint, online or batch, holds each name.

    Creating an endpoint writes its name's document in the endpoint's transaction, so
    two creates of one name, of either kind, write the same `_id` and MongoDB commits
    only one of them (a check that only read would let both through). Deleting the
    endpoint deletes the document in its transaction: the name is free at once.
    """

    def __init__(self, db: AsyncDatabase[Document], session: AsyncClientSession):
        self._c = db[ENDPOINT_NAMES]
        self._endpoints = {kind: db[name] for kind, name in ENDPOINTS.items()}
        self._s = session

    async def _stored(self, kind: EndpointKind, key: str) -> str | None:
        """The name of the `kind` endpoint whose case-folded name is `key`, if one exists."""
        raw = await self._endpoints[kind].find_one({KEY: key}, {"_id": 1}, session=self._s)
        return None if raw is None else str(raw["_id"])

    async def reserve(self, name: str, kind: EndpointKind) -> None:
        """Claim `name` for the `kind` endpoint this transaction creates (insert it first, so a
        same-kind duplicate gets that collection's message); refused while an endpoint of the
        other kind holds it. A document whose endpoint is gone (an older registry deleted it
        without releasing the name) is taken over."""
        key = name.casefold()
        held = await self._c.find_one({"_id": key}, session=self._s)
        if held is None:
            try:
                await self._c.insert_one(_reservation(name, kind), session=self._s)
            except DuplicateKeyError as exc:
                raise Conflict(f"endpoint name {name!r} was claimed meanwhile; retry") from exc
            return
        holder = EndpointKind(held["kind"])
        if holder is not kind and await self._stored(holder, key) is not None:
            raise name_taken(name, holder, str(held["name"]))
        await self._c.replace_one({"_id": key}, _reservation(name, kind), session=self._s)

    async def release(self, name: str, kind: EndpointKind) -> None:
        """Free `name` as this transaction deletes its `kind` endpoint. If an endpoint of the
        other kind has the same name (both were stored before names were one namespace),
        that one holds it from now on."""
        key = name.casefold()
        released = await self._c.delete_one({"_id": key, "kind": kind.value}, session=self._s)
        if released.deleted_count == 0:
            return
        heir = await self._stored(kind.other, key)
        if heir is not None:
            await self._c.insert_one(_reservation(heir, kind.other), session=self._s)


class Writes(Collections):
    """The collections inside a transaction, and the events that commit with it."""

    def __init__(self, db: AsyncDatabase[Document], tx: Transaction):
        super().__init__(db, tx.session)
        self.endpoint_names = EndpointNames(db, tx.session)
        self.emit = tx.emit


class RegistryStore(Collections):
    """Reads go straight to the collections; every write goes through `transaction()`."""

    def __init__(self, db: AsyncDatabase[Document], outbox: Outbox):
        super().__init__(db)
        self._db = db
        self._applied = db[GATEWAY_APPLIED]
        self._outbox = outbox

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Writes]:
        """One MongoDB transaction: its writes and its events are stored together or not at all.

        A transaction that lost a race with another one is reported as `Conflict`
        (the service retries those that the caller did not pin to a version). An
        unreachable database carries the same label but is no race: it propagates, and
        the gRPC layer answers UNAVAILABLE saying the database is down.
        """
        try:
            async with self._outbox.transaction() as tx:
                yield Writes(self._db, tx)
        except PyMongoError as exc:
            lost_race = not isinstance(exc, ConnectionFailure)
            if lost_race and exc.has_error_label("TransientTransactionError"):
                raise Conflict(f"a concurrent change got there first; retry ({exc})") from exc
            raise

    async def applied_version(self, name: str) -> int:
        """The traffic controller's record of the endpoint version Envoy serves (0: none)."""
        raw = await self._applied.find_one({"_id": "gateway"})
        return int((raw or {}).get("endpoints", {}).get(name, 0))

    async def ensure_indexes(self) -> None:
        for name in (ONLINE_DEPLOYMENTS, BATCH_DEPLOYMENTS):
            await self._db[name].create_index(
                [("spec.endpoint_name", ASCENDING), ("spec.name", ASCENDING)], unique=True
            )
        for name in (ONLINE_ENDPOINTS, ONLINE_DEPLOYMENTS, BATCH_ENDPOINTS, BATCH_DEPLOYMENTS):
            await self._migrate(self._db[name])
            await self._db[name].create_index([(KEY, ASCENDING)], unique=True, sparse=True)
        await self._reserve_endpoint_names()
        await self._db[ASSETS].create_index(
            [("spec.asset_kind", ASCENDING), ("spec.name", ASCENDING), ("spec.version", ASCENDING)],
            unique=True,
        )

    @staticmethod
    async def _migrate(collection: AsyncCollection[Document]) -> None:
        """Documents stored before `_key` existed get one; instances left the deployments."""
        async for raw in collection.find({KEY: {"$exists": False}}, {"_id": 1}):
            await collection.update_one(
                {"_id": raw["_id"]}, {"$set": {KEY: str(raw["_id"]).casefold()}}
            )
        await collection.update_many(
            {"instances": {"$exists": True}}, {"$unset": {"instances": ""}}
        )

    async def _reserve_endpoint_names(self) -> None:
        """Give every stored endpoint its `endpoint_names` document (endpoints stored before
        names were one namespace have none). An old database may hold a name in both kinds:
        both endpoints stay, the online one holds the name, and a warning says so."""
        names = self._db[ENDPOINT_NAMES]
        held = {str(raw["_id"]): raw async for raw in names.find({})}
        for kind in (EndpointKind.online, EndpointKind.batch):  # online first: it keeps a name
            async for raw in self._db[ENDPOINTS[kind]].find({}, {"_id": 1}):
                name = str(raw["_id"])
                mine, current = _reservation(name, kind), held.get(name.casefold())
                if current == mine:
                    continue
                if current is None:
                    with contextlib.suppress(DuplicateKeyError):  # another replica did it
                        await names.insert_one(mine)
                elif current["kind"] != kind and await self._held(current):
                    log.warning(
                        "endpoint_name_in_both_kinds",
                        name=name,
                        holder=f"{current['kind']} endpoint {current['name']}",
                        other=f"{kind} endpoint {name}",
                        consequence="both endpoints stay; the holder keeps the name, the other "
                        "gets it when the holder is deleted",
                    )
                    continue
                else:  # left by an endpoint that is gone
                    await names.replace_one(current, mine)
                held[mine["_id"]] = mine

    async def _held(self, reservation: Mapping[str, Any]) -> bool:
        """Whether the endpoint that `reservation` names still exists."""
        collection = self._db[ENDPOINTS[EndpointKind(reservation["kind"])]]
        return await collection.find_one({KEY: reservation["_id"]}, {"_id": 1}) is not None

    async def jobs_using(self, key: str, limit: int) -> list[str]:
        """The names of the `limit` latest batch jobs whose `assets` hold `key` (written by
        the batch service, read here for lineage), newest first."""
        cursor = (
            self._db[BATCH_JOBS]
            .find({"assets": key}, {"_id": 1})
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit)
        )
        return [str(raw["_id"]) async for raw in cursor]

    async def with_instances(self, docs: list[OnlineDeploymentDoc]) -> list[OnlineDeployment]:
        """`docs` joined with the instances the provisioner stored (read here, written there)."""
        keys = [deployment_id(d.spec.endpoint_name, d.spec.name) for d in docs]
        raws = await self._db[DEPLOYMENT_INSTANCES].find({"_id": {"$in": keys}}).to_list()
        found = {str(r["_id"]): from_document(DeploymentInstancesDoc, r).instances for r in raws}
        return [
            OnlineDeployment(spec=d.spec, meta=d.meta, instances=found.get(key, ()))
            for d, key in zip(docs, keys, strict=True)
        ]

    async def publish_jwks(self, jwks: str) -> None:
        """Store the token keys where the traffic controller reads them (this is their writer)."""
        await self._db[JWKS].replace_one(
            {"_id": JWKS_ID}, {"_id": JWKS_ID, "jwks": jwks}, upsert=True
        )

    async def signing_key(self) -> str | None:
        raw = await self._db[SIGNING_KEYS].find_one({"_id": "current"})
        return None if raw is None else str(raw["private_key"])

    async def add_signing_key(self, encrypted_private_key: str) -> None:
        """Store the token signing key unless another replica stored one first."""
        with contextlib.suppress(DuplicateKeyError):
            await self._db[SIGNING_KEYS].insert_one(
                {"_id": "current", "private_key": encrypted_private_key}
            )
