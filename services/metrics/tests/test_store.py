"""Minute documents in the real Mongo-compatible server: `$inc` per flush, a repeated flush
(the retry after a lost reply) changes nothing, a TTL index enforces the retention."""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.mongo import Document
from sluice.metrics import query
from sluice.metrics.buckets import Buckets
from sluice.metrics.store import MINUTES, MetricsStore

T0 = 1_700_000_040  # a minute boundary


def some_buckets(requests: int) -> Buckets:
    buckets = Buckets()
    for i in range(requests):
        bucket = buckets.get("shop", "blue", T0 + i % 60)
        bucket.requests += 1
        bucket.latency["100"] = bucket.latency.get("100", 0) + 1
        bucket.status_class["2xx"] = bucket.status_class.get("2xx", 0) + 1
    mirror = buckets.get("shop", "green", T0, mirror=True)
    mirror.requests += 2
    buckets.add_usage(
        endpoint="shop",
        deployment="blue",
        instance="blue-0",
        time_s=T0 + 5,
        cpu_percent=40.0,
        memory_percent=10.0,
    )
    return buckets


async def test_a_repeated_flush_never_double_counts(mongo_db: AsyncDatabase[Document]) -> None:
    store = MetricsStore(mongo_db)
    await store.ensure_indexes(retention_s=86400)
    first = some_buckets(10).take()
    assert await store.write("flush-1", first) == 2  # blue, and green's mirrored copies
    assert await store.write("flush-1", first) == 0  # the retry: nothing changes
    await store.write("flush-2", some_buckets(5).take())

    start = datetime.fromtimestamp(T0, UTC)
    docs = await store.minutes("shop", None, start, datetime.fromtimestamp(T0 + 60, UTC))
    series = query.steps(docs, step_s=60)
    blue = series["blue"][T0]
    assert blue.requests == 15
    assert blue.status_class == {"2xx": 15}
    assert blue.usage_samples == 2 and blue.cpu_sum == 80.0 and blue.instance_count == 1
    assert series["green"][T0].requests == 4 and series["green"][T0].mirrored == 4
    assert series[query.ENDPOINT_TOTAL][T0].requests == 15  # mirrored copies left out


async def test_retention_is_a_ttl_index(mongo_db: AsyncDatabase[Document]) -> None:
    await MetricsStore(mongo_db).ensure_indexes(retention_s=7 * 86400)
    indexes = await mongo_db[MINUTES].index_information()
    assert indexes["retention"]["expireAfterSeconds"] == 7 * 86400
    assert indexes["retention"]["key"] == [("minute", 1)]
