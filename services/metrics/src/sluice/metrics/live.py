"""The latest complete bucket of every deployment: published on NATS every few seconds
(`sluice.metrics.<endpoint>.<deployment>`, for the autoscaler and dashboards) and served
to Prometheus under Azure's metric names.

Read back from MongoDB rather than from memory, so what is published is exactly
what the API answers, also right after a restart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from faststream.nats import NatsBroker
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sluice.metrics import alerts, query
from sluice.metrics.envoy_stats import EnvoyStats
from sluice.metrics.flusher import Flusher
from sluice.metrics.forward import IngestStats
from sluice.metrics.store import MetricsStore

# Azure metric name -> (Prometheus family, help). docs/metrics.md documents the mapping.
FAMILIES = {
    "RequestsPerMinute": ("azureml_requests_per_minute", "Requests in the last complete minute"),
    "RequestLatency": ("azureml_request_latency_ms", "Average request latency (ms)"),
    "RequestLatency_P50": ("azureml_request_latency_p50_ms", "Median request latency (ms)"),
    "RequestLatency_P90": ("azureml_request_latency_p90_ms", "90th percentile latency (ms)"),
    "RequestLatency_P95": ("azureml_request_latency_p95_ms", "95th percentile latency (ms)"),
    "RequestLatency_P99": ("azureml_request_latency_p99_ms", "99th percentile latency (ms)"),
    "NetworkBytes": ("azureml_network_bytes_per_second", "Bytes in and out per second"),
    "ErrorsPerMinute": ("azureml_errors_per_minute", "4xx/5xx answers per minute"),
    "CpuUtilizationPercentage": ("azureml_cpu_utilization_percentage", "Instances' CPU %"),
    "CpuMemoryUtilizationPercentage": (
        "azureml_cpu_memory_utilization_percentage",
        "Instances' memory % of the instance type",
    ),
    "DeploymentCapacity": ("azureml_deployment_capacity", "Instances sampled in the minute"),
    "ConnectionsActive": (
        "azureml_connections_active",
        "Open gateway connections to the deployment's instances (mean over the minute)",
    ),
}


class LiveView(Collector):
    """The last complete bucket per (endpoint, deployment), refreshed by `refresh`."""

    def __init__(
        self,
        store: MetricsStore,
        bucket_s: int,
        stats: IngestStats | None = None,
        flusher: Flusher | None = None,
        envoys: EnvoyStats | None = None,
    ):
        self._store = store
        self._bucket_s = bucket_s
        self._stats = stats
        self._flusher = flusher
        self._envoys = envoys
        self.latest: dict[tuple[str, str], tuple[int, dict[str, float | None]]] = {}

    async def refresh(self, now: float | None = None) -> None:
        now = now if now is not None else datetime.now(UTC).timestamp()
        # The last bucket that is closed and has landed (as alert and autoscale rules read).
        last = alerts.closed_end(now, self._bucket_s) - self._bucket_s
        docs = await self._store.recent(datetime.fromtimestamp(last, UTC))
        latest: dict[tuple[str, str], tuple[int, dict[str, float | None]]] = {}
        by_endpoint: dict[str, list[Any]] = {}
        for doc in docs:
            if int(doc["minute"].timestamp()) == last:
                by_endpoint.setdefault(str(doc["endpoint"]), []).append(doc)
        for endpoint, endpoint_docs in by_endpoint.items():
            for deployment, steps in query.steps(endpoint_docs, step_s=self._bucket_s).items():
                for start, step in steps.items():
                    latest[(endpoint, deployment)] = (start, step.values(self._bucket_s))
        self.latest = latest

    async def publish(self, broker: NatsBroker, prefix: str) -> None:
        """One core-NATS message per deployment (and `_total` per endpoint)."""
        for (endpoint, deployment), (start, values) in self.latest.items():
            body = {
                "endpoint": endpoint,
                "deployment": deployment or None,
                "time": datetime.fromtimestamp(start, UTC).isoformat(),
                "interval_s": self._bucket_s,
                "metrics": values,
            }
            subject = f"{prefix}.{endpoint}.{deployment or '_total'}"
            await broker.publish(json.dumps(body).encode(), subject)

    def collect(self) -> Iterator[Any]:
        families = {
            name: GaugeMetricFamily(family, help_text, labels=["endpoint", "deployment"])
            for name, (family, help_text) in FAMILIES.items()
        }
        for (endpoint, deployment), (_, values) in sorted(self.latest.items()):
            for name, value in values.items():
                if value is not None and name in families:
                    families[name].add_metric([endpoint, deployment or "_total"], value)
        yield from families.values()
        if self._stats is not None:
            yield CounterMetricFamily(
                "sluice_metrics_access_log_entries",
                "Access-log entries received from Envoy",
                value=self._stats.entries,
            )
            yield CounterMetricFamily(
                "sluice_metrics_unattributed_entries",
                "Entries without endpoint metadata (requests for no endpoint)",
                value=self._stats.unattributed,
            )
            yield CounterMetricFamily(
                "sluice_metrics_malformed_access_log_messages",
                "Access-log messages that were not Forward mode (their connection closed)",
                value=self._stats.malformed,
            )
        if self._flusher is not None:
            yield CounterMetricFamily(
                "sluice_metrics_dropped_buckets",
                "Minute buckets dropped because MongoDB was unavailable too long",
                value=self._flusher.dropped_buckets,
            )
            yield GaugeMetricFamily(
                "sluice_metrics_pending_buckets",
                "Buckets waiting to be written to MongoDB",
                value=self._flusher.pending_buckets(),
            )
        if self._envoys is not None:
            yield from envoy_families(self._envoys)


def envoy_families(envoys: EnvoyStats) -> Iterator[Any]:
    """Each Envoy's own view (envoy_stats.py), labelled `<node id>@<address>`."""
    up = GaugeMetricFamily(
        "sluice_envoy_up", "Envoy's stats arrived in the last 3 intervals", labels=["envoy"]
    )
    clients = GaugeMetricFamily(
        "sluice_gateway_client_connections",
        "Clients' open connections to the gateway (all endpoints share them)",
        labels=["envoy"],
    )
    written = CounterMetricFamily(
        "sluice_envoy_access_log_entries_written",
        "Access-log records Envoy queued for this service (entries_buffered)",
        labels=["envoy"],
    )
    dropped = CounterMetricFamily(
        "sluice_envoy_access_log_entries_dropped",
        "Access-log records Envoy lost, never counted in the metrics (entries_lost)",
        labels=["envoy"],
    )
    for address, reading in sorted(envoys.envoys.items()):
        up.add_metric([address], 1.0 if envoys.up(reading) else 0.0)
        clients.add_metric([address], reading.client_connections)
        written.add_metric([address], reading.logs_written)
        dropped.add_metric([address], reading.logs_dropped)
    yield from (up, clients, written, dropped)
