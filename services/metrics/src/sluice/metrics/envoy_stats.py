"""Envoy's own numbers, streamed by its stats sink: open connections and access-log drops.

The access log says what each request did, not how many connections are open,
nor what Envoy could not log. Envoy's stats say both. Its bootstrap
(deploy/envoy/bootstrap.yaml) streams them every 5 s with the stats sink
`envoy.stat_sinks.metrics_service` to this service's mutual-TLS access-log port,
the same way in the local platform, compose and Kubernetes (Envoy's admin
interface is private to its host, and shows every key). Read from each message:

- `cluster.upstream_cx_active{envoy.cluster_name}`: the gateway's open
  connections to a deployment's instances. Envoy names the cluster only; which
  deployment it serves is what the traffic controller states in
  `gateway_applied.clusters` (the same `{endpoint, deployment}` it puts in the
  cluster's metadata), never parsed from the name. Every few seconds
  (`SLUICE_METRICS_ENVOY_STATS_INTERVAL_S`) the latest values, summed over the
  Envoys heard from, become one sample of the deployment's minute bucket:
  `ConnectionsActive` is the minute's mean, and an endpoint's is the sum of its
  deployments'.
- `http.downstream_cx_active{envoy.http_conn_manager_prefix}`: clients'
  connections to the gateway. Every endpoint shares the gateway's listeners,
  and one HTTP/2 connection can carry requests for several endpoints, so these
  belong to no endpoint: a gateway-wide gauge per Envoy.
- `access_logs.fluentd.sluice.entries_buffered` / `entries_lost`: access-log
  records Envoy queued for this service, or lost instead (its buffer full while
  this service was away): requests the metrics will never count, so they are
  exported as counters per Envoy and logged.

An Envoy is `<node id>@<its address>`: the replicas of a Kubernetes deployment
share one node id.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.log import get_logger
from sluice.common.mongo import Document
from sluice.common.resources import GATEWAY_APPLIED
from sluice.metrics.buckets import Buckets
from sluice.v1 import envoy_stats_pb2

log = get_logger(__name__)
SERVICE_NAME = "envoy.service.metrics.v3.MetricsService"
METHOD = "StreamMetrics"
UPSTREAM = "cluster.upstream_cx_active"
DOWNSTREAM = "http.downstream_cx_active"
WRITTEN = "access_logs.fluentd.sluice.entries_buffered"  # stat_prefix: access_log.TAG
DROPPED = "access_logs.fluentd.sluice.entries_lost"
CLUSTER_LABEL = "envoy.cluster_name"
LISTENER_LABEL = "envoy.http_conn_manager_prefix"
ADMIN_PREFIX = "admin"  # the admin interface's own connection manager
WANTED = frozenset({UPSTREAM, DOWNSTREAM, WRITTEN, DROPPED})
# An Envoy not heard from for 3 of its flushes (the bootstrap's `stats_flush_interval: 5s`)
# is down: its numbers stop counting.
SILENT_S = 15.0
# ... and forgotten after an hour (Kubernetes replaces pods: their labels would pile up).
FORGOTTEN_S = 3600.0
# Owners are read again when a cluster has none, at most this often (a cluster exists in
# Envoy a moment before the controller records it, on Envoy's ACK).
OWNERS_RETRY_S = 10.0

Owner = tuple[str, str]  # (endpoint, deployment)


@dataclass
class EnvoyReading:
    """One Envoy at its last stats message."""

    heard_at: float = 0.0  # monotonic
    upstream: dict[str, int] = field(default_factory=dict)  # cluster -> open connections
    client_connections: int = 0
    logs_written: int = 0
    logs_dropped: int = 0


class ClusterOwners:
    """Envoy cluster name -> (endpoint, deployment), as the traffic controller records it."""

    def __init__(self, db: AsyncDatabase[Document]):
        self._applied = db[GATEWAY_APPLIED]
        self._owners: dict[str, Owner] = {}
        self._read_at = float("-inf")
        self._unknown_then: frozenset[str] = frozenset()

    async def of(self, clusters: Collection[str]) -> dict[str, Owner]:
        """The owners of `clusters` that have one (the xDS, access-log and management
        clusters have none)."""
        unknown = frozenset(c for c in clusters if c not in self._owners)
        retry = time.monotonic() - self._read_at >= OWNERS_RETRY_S
        if unknown and (retry or not unknown <= self._unknown_then):
            doc = await self._applied.find_one({"_id": "gateway"}, {"clusters": 1}) or {}
            recorded = doc.get("clusters") or {}
            self._owners |= {
                name: (str(o["endpoint"]), str(o["deployment"]))
                for name, o in recorded.items()
                if o.get("endpoint") and o.get("deployment")
            }
            self._read_at = time.monotonic()
            self._unknown_then = frozenset(c for c in clusters if c not in self._owners)
        return {c: self._owners[c] for c in clusters if c in self._owners}


class EnvoyStats:
    """The latest stats of every Envoy; `sample` adds their sum per deployment."""

    def __init__(self, buckets: Buckets, owners: ClusterOwners):
        self._buckets = buckets
        self._owners = owners
        self.envoys: dict[str, EnvoyReading] = {}

    def take(self, envoy: str, families: Iterable[Any]) -> None:
        """One stats message of `envoy` (EnvoyMetricFamily values)."""
        reading = self.envoys.setdefault(envoy, EnvoyReading())
        upstream: dict[str, int] = {}
        clients = 0
        for family in families:
            name = family.name
            if name not in WANTED:
                continue
            for metric in family.metric:
                labels = {label.name: label.value for label in metric.label}
                if name == UPSTREAM:
                    upstream[labels.get(CLUSTER_LABEL, "")] = int(metric.gauge.value)
                elif name == DOWNSTREAM:
                    if labels.get(LISTENER_LABEL) != ADMIN_PREFIX:
                        clients += int(metric.gauge.value)
                elif name == WRITTEN:
                    reading.logs_written = int(metric.counter.value)
                else:
                    dropped = int(metric.counter.value)
                    if dropped > reading.logs_dropped:
                        log.warning(
                            "envoy_dropped_access_log_entries",
                            envoy=envoy,
                            dropped=dropped - reading.logs_dropped,
                            total=dropped,
                        )
                    reading.logs_dropped = dropped
        reading.upstream = upstream
        reading.client_connections = clients
        reading.heard_at = time.monotonic()

    def up(self, reading: EnvoyReading) -> bool:
        return time.monotonic() - reading.heard_at <= SILENT_S

    async def sample(self, now: float | None = None) -> None:
        """One ConnectionsActive sample per deployment, over the Envoys that are up."""
        now = now if now is not None else time.time()
        silent_since = time.monotonic() - FORGOTTEN_S
        for envoy in [e for e, r in self.envoys.items() if r.heard_at < silent_since]:
            del self.envoys[envoy]
        per_cluster: dict[str, int] = {}
        for reading in self.envoys.values():
            if self.up(reading):
                for cluster, count in reading.upstream.items():
                    per_cluster[cluster] = per_cluster.get(cluster, 0) + count
        if not per_cluster:
            return
        per_deployment: dict[Owner, int] = {}
        for cluster, owner in (await self._owners.of(per_cluster)).items():
            per_deployment[owner] = per_deployment.get(owner, 0) + per_cluster[cluster]
        for (endpoint, deployment), count in per_deployment.items():
            self._buckets.add_connections(
                endpoint=endpoint, deployment=deployment, time_s=now, connections=count
            )


class StatsSinkReceiver:
    """`/envoy.service.metrics.v3.MetricsService/StreamMetrics`: one stream per Envoy, its
    node on the first message only. Served beside the access log, on its mutual-TLS port."""

    def __init__(self, stats: EnvoyStats):
        self._stats = stats

    async def stream(
        self, messages: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> envoy_stats_pb2.EnvoyStatsResponse:
        envoy = _host(context.peer())
        async for message in messages:
            if message.HasField("identifier"):
                envoy = f"{message.identifier.node.id}@{_host(context.peer())}"
            self._stats.take(envoy, message.envoy_metrics)
        return envoy_stats_pb2.EnvoyStatsResponse()

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_unary_rpc_method_handler(
            self.stream,
            request_deserializer=envoy_stats_pb2.EnvoyStatsMessage.FromString,
            response_serializer=envoy_stats_pb2.EnvoyStatsResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD: method})


def _host(peer: str) -> str:
    """`ipv4:10.0.0.5:41234` -> `10.0.0.5`; `ipv6:[::1]:41234` -> `::1`."""
    address = peer.split(":", 1)[-1]
    host = address.rsplit(":", 1)[0]
    return host.strip("[]")
