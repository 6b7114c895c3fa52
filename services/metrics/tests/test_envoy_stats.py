"""Envoy's stats into ConnectionsActive: attribution by cluster metadata, minute means, sums."""

from __future__ import annotations

from datetime import UTC, datetime

from sluice.metrics import query
from sluice.metrics.buckets import Buckets
from sluice.metrics.envoy_stats import cluster_owners
from sluice.metrics.store import update_of


def test_clusters_are_attributed_by_their_metadata_not_their_names() -> None:
    dump = {
        "configs": [
            {
                "cluster": {
                    "name": "anything-at-all",
                    "metadata": {
                        "filter_metadata": {"sluice": {"endpoint": "ep", "deployment": "blue"}}
                    },
                }
            },
            {"cluster": {"name": "sluice_als"}},
            {"cluster": {"name": "ep.green", "metadata": {"filter_metadata": {"other": {}}}}},
        ]
    }
    assert cluster_owners(dump) == {
        "anything-at-all": ("ep", "blue"),
        "sluice_als": None,
        "ep.green": None,
    }


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
