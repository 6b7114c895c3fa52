"""Envoy's stats into ConnectionsActive: attribution by what the traffic controller recorded,
minute means, sums over Envoys and deployments; access-log counters per Envoy."""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.mongo import Document
from sluice.common.resources import GATEWAY_APPLIED
from sluice.metrics import query
from sluice.metrics.buckets import Buckets
from sluice.metrics.envoy_stats import DROPPED, WRITTEN, ClusterOwners, EnvoyStats
from sluice.metrics.store import update_of
from sluice.v1 import envoy_stats_pb2 as pb

GAUGE = pb.EnvoyMetricFamily.GAUGE
COUNTER = pb.EnvoyMetricFamily.COUNTER


def family(name: str, kind: int, *values: tuple[dict[str, str], float]) -> pb.EnvoyMetricFamily:
    """One family as Envoy's sink sends it with `emit_tags_as_labels`."""
    metrics = []
    for labels, value in values:
        metric = pb.EnvoyMetric(
            label=[pb.EnvoyMetric.Label(name=k, value=v) for k, v in labels.items()]
        )
        (metric.gauge if kind == GAUGE else metric.counter).value = value
        metrics.append(metric)
    return pb.EnvoyMetricFamily(name=name, type=kind, metric=metrics)


def stats_message(
    upstream: dict[str, float], clients: float, written: float, dropped: float
) -> bytes:
    message = pb.EnvoyStatsMessage(
        envoy_metrics=[
            family(
                "cluster.upstream_cx_active",
                GAUGE,
                *(({"envoy.cluster_name": c}, n) for c, n in upstream.items()),
            ),
            family(
                "http.downstream_cx_active",
                GAUGE,
                ({"envoy.http_conn_manager_prefix": "https"}, clients),
                ({"envoy.http_conn_manager_prefix": "admin"}, 7),  # the admin interface's
            ),
            family(WRITTEN, COUNTER, ({}, written)),
            family(DROPPED, COUNTER, ({}, dropped)),
            family("cluster.upstream_rq_total", COUNTER, ({"envoy.cluster_name": "x"}, 9)),
        ]
    )
    return message.SerializeToString()  # what arrives on the wire


async def test_clusters_count_for_the_deployment_the_controller_recorded_summed_over_envoys(
    mongo_db: AsyncDatabase[Document],
) -> None:
    await mongo_db[GATEWAY_APPLIED].insert_one(
        {
            "_id": "gateway",
            "snapshot": "s1",
            "endpoints": {"ep": 1},
            "clusters": {"anything-at-all": {"endpoint": "ep", "deployment": "blue"}},
        }
    )
    buckets = Buckets(60)
    stats = EnvoyStats(buckets, ClusterOwners(mongo_db))
    # ep__green looks like a deployment's name, but nothing says whose it is: not counted.
    first = {"anything-at-all": 2, "sluice_als": 1, "ep__green": 5}
    stats.take(
        "gw@10.0.0.1", pb.EnvoyStatsMessage.FromString(stats_message(first, 3, 40, 0)).envoy_metrics
    )
    second = {"anything-at-all": 1}
    stats.take(
        "gw@10.0.0.2",
        pb.EnvoyStatsMessage.FromString(stats_message(second, 4, 10, 2)).envoy_metrics,
    )

    minute = 1_800_000_000 - 1_800_000_000 % 60
    await stats.sample(now=minute + 1)
    taken = buckets.take()
    assert {(e, d): b.connections_sum for (e, d, _, _), b in taken.items()} == {("ep", "blue"): 3}
    one, two = stats.envoys["gw@10.0.0.1"], stats.envoys["gw@10.0.0.2"]
    assert (one.client_connections, one.logs_written, one.logs_dropped) == (3, 40, 0)
    assert (two.client_connections, two.logs_written, two.logs_dropped) == (4, 10, 2)
    assert stats.up(one) and stats.up(two)

    # An Envoy silent for 15 s is down and counts no more; after an hour it is forgotten.
    two.heard_at -= 20
    await stats.sample(now=minute + 2)
    assert {(e, d): b.connections_sum for (e, d, _, _), b in buckets.take().items()} == {
        ("ep", "blue"): 2
    }
    assert not stats.up(two)
    two.heard_at -= 3600
    await stats.sample(now=minute + 3)
    assert list(stats.envoys) == ["gw@10.0.0.1"]


def test_connections_are_minute_means_and_the_endpoint_sums_its_deployments() -> None:
    buckets = Buckets(60)
    minute = 1_800_000_000 - 1_800_000_000 % 60
    for n in (1, 3):  # two samples of blue in the first minute: mean 2
        buckets.add_connections(endpoint="ep", deployment="blue", time_s=minute + n, connections=n)
    buckets.add_connections(endpoint="ep", deployment="green", time_s=minute + 5, connections=4)
    buckets.add_connections(endpoint="ep", deployment="blue", time_s=minute + 61, connections=6)
    docs = []
    for (endpoint, deployment, start, _), bucket in buckets.take().items():
        assert not bucket.is_empty()
        inc = update_of(bucket)["$inc"]
        docs.append(
            {
                "endpoint": endpoint,
                "deployment": deployment,
                "minute": datetime.fromtimestamp(start, UTC),
                **inc,
            }
        )
    per_minute = query.steps(docs, step_s=60)
    assert per_minute["blue"][minute].values(60)["ConnectionsActive"] == 2.0
    assert per_minute[""][minute].values(60)["ConnectionsActive"] == 6.0  # 2 + 4
    assert per_minute["blue"][minute + 60].values(60)["ConnectionsActive"] == 6.0
    two_minutes = query.steps(docs, step_s=120)
    assert two_minutes["blue"][minute].values(120)["ConnectionsActive"] == 4.0  # (2 + 6) / 2
    # No samples: no value (not zero).
    assert query.Step(0).values(60)["ConnectionsActive"] is None
