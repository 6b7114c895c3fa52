"""Minute buckets: what one deployment did in one minute, as counters that add up.

Every field of a bucket is a sum (counts, bytes, sketch bins, CPU sums), so a
bucket is written to MongoDB with `$inc` and two partial buckets of the same
minute, from two flushes, merge by addition. The access-log receiver and the
usage subscriber add to the open buckets; the flusher takes them all at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

# Envoy's own failures worth a chart (its short response flags -> our name): the gateway
# answered or gave up without a model's answer.
FAILURE_FLAGS = {
    "UH": "no_healthy_upstream",  # 503, no ready instance
    "UT": "timeout",  # 408 (request_timeout_ms)
    "UO": "overflow",  # 429 from the in-flight limit
    "UF": "connection_failure",
    "UR": "upstream_reset",
    "UC": "upstream_reset",
    "LR": "local_reset",
    "DC": "client_disconnected",
}


def minute_datetime(minute: int) -> datetime:
    return datetime.fromtimestamp(minute, UTC)


@dataclass(slots=True)
class Bucket:
    requests: int = 0
    latency_sum_ms: float = 0.0
    latency: dict[str, int] = field(default_factory=dict)  # sketch bins (sluice.metrics.sketch)
    status_class: dict[str, int] = field(default_factory=dict)  # "2xx" -> n
    status_code: dict[str, int] = field(default_factory=dict)  # "200" -> n
    failures: dict[str, int] = field(default_factory=dict)  # FAILURE_FLAGS values -> n
    bytes_in: int = 0
    bytes_out: int = 0
    # Usage samples of the provisioner: sums and counts, averaged when read.
    cpu_sum: float = 0.0
    memory_sum: float = 0.0
    usage_samples: int = 0
    instances: set[str] = field(default_factory=set)  # instance ids sampled in the minute
    # Envoy's open connections to the deployment's instances (envoy_stats.py): sum and count
    # of the samples, averaged when read.
    connections_sum: float = 0.0
    connection_samples: int = 0

    def is_empty(self) -> bool:
        return self.requests == 0 and self.usage_samples == 0 and self.connection_samples == 0


# (endpoint, deployment, minute epoch s, mirror); deployment "" = Envoy answered alone;
# mirror = copies sent by the mirror policy, kept apart so totals can leave them out.
BucketKey = tuple[str, str, int, bool]


class Buckets:
    """The open buckets since the last flush, `width_s` seconds each (60 = Azure's PT1M)."""

    def __init__(self, width_s: int = 60) -> None:
        self.width_s = width_s
        self.open: dict[BucketKey, Bucket] = {}

    def get(self, endpoint: str, deployment: str, epoch_s: int, mirror: bool = False) -> Bucket:
        """The open bucket of the minute (bucket) that `epoch_s` falls in."""
        key = (endpoint, deployment, epoch_s - epoch_s % self.width_s, mirror)
        bucket = self.open.get(key)
        if bucket is None:
            bucket = self.open[key] = Bucket()
        return bucket

    def take(self) -> dict[BucketKey, Bucket]:
        """Everything since the last take; new entries go to fresh buckets."""
        taken, self.open = self.open, {}
        return taken

    def add_usage(
        self,
        *,
        endpoint: str,
        deployment: str,
        instance: str,
        time_s: float,
        cpu_percent: float,
        memory_percent: float,
    ) -> None:
        bucket = self.get(endpoint, deployment, int(time_s))
        bucket.cpu_sum += cpu_percent
        bucket.memory_sum += memory_percent
        bucket.usage_samples += 1
        bucket.instances.add(instance)

    def add_connections(
        self, *, endpoint: str, deployment: str, time_s: float, connections: int
    ) -> None:
        bucket = self.get(endpoint, deployment, int(time_s))
        bucket.connections_sum += connections
        bucket.connection_samples += 1
