"""Kubernetes deployments have no usage data (no instance-hours, no usage samples: only the
local backend records them), and the answers say which deployments that is, so the CLI
says "no usage data for kubernetes deployments" instead of printing zeros."""

from __future__ import annotations

import time

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.mongo import Document
from sluice.common.resources import ONLINE_DEPLOYMENTS, ONLINE_ENDPOINTS
from sluice.metrics.api import MetricsQueries
from sluice.metrics.buckets import Buckets
from sluice.metrics.cache import PointCache
from sluice.metrics.store import MetricsStore
from sluice.v1 import metrics_pb2

pytestmark = pytest.mark.integration


def deployment(endpoint: str, name: str, kind: str) -> Document:
    spec = {"endpoint_name": endpoint, "name": name, "kind": kind}
    return {"_id": f"{endpoint}/{name}", "spec": spec}


async def test_the_answers_name_the_kubernetes_deployments(
    mongo_db: AsyncDatabase[Document],
) -> None:
    store = MetricsStore(mongo_db)
    await store.ensure_indexes(retention_s=86400)
    now = int(time.time()) // 60 * 60
    buckets = Buckets()
    for name in ("blue", "k8s"):
        buckets.get("shop", name, now - 120).requests = 5
    await store.write("flush-1", buckets.take())
    await mongo_db[ONLINE_ENDPOINTS].insert_many([{"_id": "shop"}, {"_id": "other"}])
    await mongo_db[ONLINE_DEPLOYMENTS].insert_many(
        [
            deployment("shop", "blue", "managed"),
            deployment("shop", "k8s", "kubernetes"),
            deployment("other", "k8s-too", "kubernetes"),
        ]
    )
    queries = MetricsQueries(mongo_db, store, "USD", 60, PointCache())

    def metrics(deployment: str = "") -> metrics_pb2.GetEndpointMetricsRequest:
        request = metrics_pb2.GetEndpointMetricsRequest(
            endpoint_name="shop", deployment_name=deployment
        )
        request.window.start.FromSeconds(now - 600)
        request.window.end.FromSeconds(now)
        return request

    answer = await queries.endpoint_metrics(metrics())
    assert list(answer.no_usage_deployments) == ["k8s"]
    assert {p.deployment_name for p in answer.points} >= {"blue", "k8s"}  # requests are counted
    assert list((await queries.endpoint_metrics(metrics("blue"))).no_usage_deployments) == []
    assert list((await queries.endpoint_metrics(metrics("k8s"))).no_usage_deployments) == ["k8s"]

    report = await queries.cost_report(metrics_pb2.GetCostsRequest(endpoint_name="shop"))
    assert list(report.no_usage_deployments) == ["shop/k8s"]
    everything = await queries.cost_report(metrics_pb2.GetCostsRequest())
    assert list(everything.no_usage_deployments) == ["other/k8s-too", "shop/k8s"]
