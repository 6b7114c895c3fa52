"""MongoDB storage of minute buckets: one document per deployment-minute.

A flush writes every bucket it took with one `$inc` upsert each, all tagged with
the flush's id: the filter `{_id, flushes: {$ne: id}}` makes a repeated write of
the same flush (a retry after a lost reply) a no-op, because either the filter no
longer matches and the upsert's insert fails on the existing `_id`, or it never
happened. So a retry never double-counts, and a crash loses only the buckets not
yet flushed. A TTL index on `minute` deletes documents after the retention.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from sluice.common.mongo import Document
from sluice.metrics.buckets import Bucket, BucketKey, minute_datetime

MINUTES = "metrics_minutes"
DUPLICATE_KEY = 11000


def document_id(endpoint: str, deployment: str, minute: int, mirror: bool) -> str:
    return f"{endpoint}/{deployment}/{minute}{'/mirror' if mirror else ''}"


def update_of(bucket: Bucket) -> dict[str, Any]:
    """The `$inc` (and `$set`) of one bucket; field names are Mongo-safe (no dots)."""
    inc: dict[str, float] = {}
    for name in ("requests", "bytes_in", "bytes_out", "usage_samples", "connection_samples"):
        value = getattr(bucket, name)
        if value:
            inc[name] = value
    for name in ("latency_sum_ms", "cpu_sum", "memory_sum", "connections_sum"):
        value = getattr(bucket, name)
        if value:
            inc[name] = value
    for prefix, counts in (
        ("latency", bucket.latency),
        ("status_class", bucket.status_class),
        ("status_code", bucket.status_code),
        ("failures", bucket.failures),
    ):
        for k, n in counts.items():
            inc[f"{prefix}.{k}"] = n
    update: dict[str, Any] = {"$inc": inc} if inc else {}
    if bucket.instances:
        update["$set"] = {f"instances.{i}": 1 for i in bucket.instances}
    return update


class MetricsStore:
    def __init__(self, db: AsyncDatabase[Document]):
        self._minutes = db[MINUTES]

    async def ensure_indexes(self, retention_s: float) -> None:
        await self._minutes.create_index(
            [("endpoint", ASCENDING), ("deployment", ASCENDING), ("minute", ASCENDING)]
        )
        await self._minutes.create_index(
            [("minute", ASCENDING)], expireAfterSeconds=int(retention_s), name="retention"
        )

    async def write(self, flush_id: str, buckets: Mapping[BucketKey, Bucket]) -> int:
        """Apply one flush; safe to call again with the same id and buckets. Returns the
        number of minute documents it touched the first time (0 on a repeat)."""
        ops = []
        for (endpoint, deployment, minute, mirror), bucket in buckets.items():
            update = update_of(bucket)
            if not update:
                continue
            update.setdefault("$set", {})
            update["$set"].update(
                endpoint=endpoint,
                deployment=deployment,
                minute=minute_datetime(minute),
                mirror=mirror,
            )
            update["$push"] = {"flushes": flush_id}
            ops.append(
                UpdateOne(
                    {
                        "_id": document_id(endpoint, deployment, minute, mirror),
                        "flushes": {"$ne": flush_id},
                    },
                    update,
                    upsert=True,
                )
            )
        if not ops:
            return 0
        try:
            result = await self._minutes.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            # Duplicate keys: those documents already carry this flush (a retry).
            details = exc.details
            return int(details.get("nModified", 0)) + int(details.get("nUpserted", 0))
        return result.modified_count + result.upserted_count

    async def minutes(
        self, endpoint: str, deployment: str | None, start: datetime, end: datetime
    ) -> list[Document]:
        """The minute documents of a window [start, end), oldest first."""
        query: dict[str, Any] = {"endpoint": endpoint, "minute": {"$gte": start, "$lt": end}}
        if deployment is not None:
            query["deployment"] = deployment
        cursor = self._minutes.find(query, {"flushes": 0}).sort("minute", ASCENDING)
        return [doc async for doc in cursor]

    async def recent(self, since: datetime) -> list[Document]:
        """Every document of every deployment from `since` on."""
        cursor = self._minutes.find({"minute": {"$gte": since}}, {"flushes": 0})
        return [doc async for doc in cursor]

    async def endpoints_since(self, since: datetime) -> list[str]:
        """Endpoints with a minute document from `since` on."""
        found = await self._minutes.distinct("endpoint", {"minute": {"$gte": since}})
        return sorted(str(e) for e in found)

    async def has_endpoint(self, endpoint: str, deployment: str | None = None) -> bool:
        query = {"endpoint": endpoint}
        if deployment is not None:
            query["deployment"] = deployment
        return await self._minutes.find_one(query, {"_id": 1}) is not None


def new_flush_id() -> str:
    return uuid.uuid4().hex
