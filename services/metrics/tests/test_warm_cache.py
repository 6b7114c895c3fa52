"""After a restart the aggregator warms its point cache: the first 24 h query reads no minute."""

from __future__ import annotations

import time

from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.mongo import Document
from sluice.common.resources import ONLINE_DEPLOYMENTS, ONLINE_ENDPOINTS
from sluice.metrics.api import MetricsQueries
from sluice.metrics.buckets import Buckets
from sluice.metrics.cache import PointCache
from sluice.metrics.store import MINUTES, MetricsStore
from sluice.v1 import metrics_pb2


async def test_warmed_points_answer_without_reading_the_minutes(
    mongo_db: AsyncDatabase[Document],
) -> None:
    store = MetricsStore(mongo_db)
    await store.ensure_indexes(retention_s=86400)
    now = int(time.time()) // 60 * 60
    buckets = Buckets()
    for minute in range(now - 3600, now - 120, 60):
        for deployment, requests in (("blue", 3), ("green", 1)):
            bucket = buckets.get("shop", deployment, minute)
            bucket.requests = requests
            bucket.latency = {"100": requests}
    await store.write("flush-1", buckets.take())
    await mongo_db[ONLINE_ENDPOINTS].insert_one({"_id": "shop"})
    await mongo_db[ONLINE_DEPLOYMENTS].insert_one({"_id": "shop/blue"})

    queries = MetricsQueries(mongo_db, store, "USD", 60, PointCache())
    assert await queries.warm(hours=2) == 1
    await mongo_db[MINUTES].delete_many({})  # from now on only the cache knows the minutes

    request = metrics_pb2.GetEndpointMetricsRequest(endpoint_name="shop", deployment_name="blue")
    request.window.start.FromSeconds(now - 3600)
    request.window.end.FromSeconds(now - 120)
    points = (await queries.endpoint_metrics(request)).points
    assert len(points) == 58
    assert {p.deployment_name for p in points} == {"blue"}
    assert sum(p.requests for p in points) == 3 * 58
