"""The registry's MongoDB code: one small typed wrapper per collection.

Writes are conditional on `meta.version` (optimistic concurrency): a replace
names the version it was computed from and fails with `Conflict` if the
stored one moved on. Names are `_id`s, so uniqueness is the database's job.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from sluice.common.mongo import Document
from sluice.common.resources import (
    BATCH_DEPLOYMENTS,
    BATCH_ENDPOINTS,
    ONLINE_DEPLOYMENTS,
    ONLINE_ENDPOINTS,
    BatchDeploymentDoc,
    BatchEndpointDoc,
    OnlineDeploymentDoc,
    OnlineEndpointDoc,
    from_document,
    to_document,
)
from sluice.registry.domain import AlreadyExists, Conflict

SIGNING_KEYS = "signing_keys"

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
        *,
        foreign_fields: frozenset[str] = frozenset(),
    ):
        self._c = collection
        self._model = model
        self.kind = kind
        # Fields other services write (a deployment's instances): never overwritten here.
        self._foreign = foreign_fields | {"_id"}

    def _load(self, raw: Mapping[str, Any]) -> DocT:
        return from_document(self._model, raw)

    async def insert(self, _id: str, doc: DocT) -> None:
        try:
            await self._c.insert_one(to_document(doc, _id))
        except DuplicateKeyError as exc:
            raise AlreadyExists(
                f"{self.kind} {_id!r} already exists; use `update` to change it"
            ) from exc

    async def get(self, _id: str) -> DocT | None:
        raw = await self._c.find_one({"_id": _id})
        return None if raw is None else self._load(raw)

    async def replace(self, _id: str, doc: DocT, *, expected_version: int) -> None:
        """Store `doc` if the stored version is still `expected_version`."""
        fields = {k: v for k, v in to_document(doc, _id).items() if k not in self._foreign}
        result = await self._c.update_one(
            {"_id": _id, "meta.version": expected_version}, {"$set": fields}
        )
        if result.matched_count == 0:
            current = await self._c.find_one({"_id": _id}, {"meta.version": 1})
            if current is None:
                raise Conflict(f"{self.kind} {_id!r} was deleted meanwhile")
            raise Conflict(
                f"{self.kind} {_id!r} changed meanwhile (version {expected_version} expected, "
                f"{current['meta']['version']} stored); read it again and retry"
            )

    async def delete(self, _id: str) -> bool:
        result = await self._c.delete_one({"_id": _id})
        return result.deleted_count == 1

    async def page(
        self, *, size: int, after: str, where: Mapping[str, Any] | None = None
    ) -> Page[DocT]:
        """Up to `size` documents with `_id` > `after`, in `_id` order."""
        query: dict[str, Any] = dict(where or {})
        if after:
            query["_id"] = {"$gt": after}
        raws = await self._c.find(query).sort("_id", ASCENDING).limit(size + 1).to_list()
        items = [self._load(raw) for raw in raws[:size]]
        next_token = str(raws[size - 1]["_id"]) if len(raws) > size else ""
        return Page(items=items, next_token=next_token)

    async def find(self, where: Mapping[str, Any]) -> list[DocT]:
        raws = await self._c.find(dict(where)).sort("_id", ASCENDING).to_list()
        return [self._load(raw) for raw in raws]

    async def delete_many(self, where: Mapping[str, Any]) -> None:
        await self._c.delete_many(dict(where))


class RegistryStore:
    def __init__(self, db: AsyncDatabase[Document]):
        self._db = db
        self.online_endpoints = Collection(db[ONLINE_ENDPOINTS], OnlineEndpointDoc, "endpoint")
        self.online_deployments = Collection(
            db[ONLINE_DEPLOYMENTS],
            OnlineDeploymentDoc,
            "deployment",
            foreign_fields=frozenset({"instances"}),
        )
        self.batch_endpoints = Collection(db[BATCH_ENDPOINTS], BatchEndpointDoc, "batch endpoint")
        self.batch_deployments = Collection(
            db[BATCH_DEPLOYMENTS], BatchDeploymentDoc, "batch deployment"
        )

    async def ensure_indexes(self) -> None:
        for name in (ONLINE_DEPLOYMENTS, BATCH_DEPLOYMENTS):
            await self._db[name].create_index(
                [("spec.endpoint_name", ASCENDING), ("spec.name", ASCENDING)], unique=True
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
