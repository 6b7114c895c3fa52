"""Minute documents -> series at any step: sums add, sketches merge, usage averages.

Pure functions over the stored documents, so the gRPC API, the Prometheus view,
the NATS snapshots and the alert rules all compute a metric the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sluice.metrics import sketch

QUANTILES = (0.5, 0.9, 0.95, 0.99)
ENDPOINT_TOTAL = ""  # the deployment name of an endpoint's total series


@dataclass
class Step:
    """One step of one series: the sums of its minute documents."""

    start: int  # epoch seconds
    requests: int = 0
    mirrored: int = 0
    latency_sum_ms: float = 0.0
    latency: dict[str, int] = field(default_factory=dict)
    status_class: dict[str, int] = field(default_factory=dict)
    status_code: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    cpu_sum: float = 0.0
    memory_sum: float = 0.0
    usage_samples: int = 0
    # minute epoch -> the instances that reported in it ("deployment/instance id"; an
    # endpoint's total unites its deployments' instances, so its count is their sum)
    instances: dict[int, set[str]] = field(default_factory=dict)
    # minute epoch -> open connections in it (each deployment's mean over its samples, summed)
    connections: dict[int, float] = field(default_factory=dict)

    def add(self, doc: Mapping[str, Any], *, client_view: bool = False) -> None:
        """Add one minute document; `client_view` leaves mirrored copies out (endpoint
        totals count what clients sent)."""
        requests = int(doc.get("requests", 0))
        if doc.get("mirror"):
            if client_view:
                return
            self.mirrored += requests
        self.requests += requests
        self.latency_sum_ms += float(doc.get("latency_sum_ms", 0.0))
        sketch.merge(self.latency, doc.get("latency", {}))
        for name in ("status_class", "status_code", "failures"):
            target: dict[str, int] = getattr(self, name)
            for k, n in doc.get(name, {}).items():
                target[k] = target.get(k, 0) + int(n)
        self.bytes_in += int(doc.get("bytes_in", 0))
        self.bytes_out += int(doc.get("bytes_out", 0))
        self.cpu_sum += float(doc.get("cpu_sum", 0.0))
        self.memory_sum += float(doc.get("memory_sum", 0.0))
        self.usage_samples += int(doc.get("usage_samples", 0))
        if doc.get("instances"):
            seen = self.instances.setdefault(int(doc["minute"].timestamp()), set())
            seen.update(f"{doc.get('deployment', '')}/{i}" for i in doc["instances"])
        samples = int(doc.get("connection_samples", 0))
        if samples:
            minute = int(doc["minute"].timestamp())
            mean = float(doc.get("connections_sum", 0.0)) / samples
            self.connections[minute] = self.connections.get(minute, 0.0) + mean

    @property
    def instance_count(self) -> int:
        """The most instances seen in any minute of the step (for an endpoint's total, the
        sum of its deployments' instances in that minute)."""
        return max((len(seen) for seen in self.instances.values()), default=0)

    def quantiles(self) -> list[float | None]:
        return sketch.quantiles(self.latency, QUANTILES)

    def values(self, step_s: int) -> dict[str, float | None]:
        """This step as Azure's metrics (docs/metrics.md): name -> value (None = no data)."""
        p50, p90, p95, p99 = self.quantiles()
        minutes = step_s / 60
        usage = self.usage_samples
        errors = sum(n for k, n in self.status_class.items() if k in ("4xx", "5xx", "0xx"))
        return {
            "RequestsPerMinute": self.requests / minutes,
            "RequestLatency": self.latency_sum_ms / self.requests if self.requests else None,
            "RequestLatency_P50": p50,
            "RequestLatency_P90": p90,
            "RequestLatency_P95": p95,
            "RequestLatency_P99": p99,
            "NetworkBytes": (self.bytes_in + self.bytes_out) / step_s,
            "ErrorsPerMinute": errors / minutes,
            "CpuUtilizationPercentage": self.cpu_sum / usage if usage else None,
            "CpuMemoryUtilizationPercentage": self.memory_sum / usage if usage else None,
            "DeploymentCapacity": float(self.instance_count) if usage else None,
            "ConnectionsActive": (
                sum(self.connections.values()) / len(self.connections) if self.connections else None
            ),
        }


def steps(
    docs: Iterable[Mapping[str, Any]], *, step_s: int, total_only: bool = False
) -> dict[str, dict[int, Step]]:
    """Group minute documents by deployment and step; with several deployments (or
    `total_only`) also the endpoint's total under ENDPOINT_TOTAL."""
    series: dict[str, dict[int, Step]] = {}
    total: dict[int, Step] = {}
    for doc in docs:
        minute: datetime = doc["minute"]
        epoch = int(minute.timestamp())
        start = epoch - epoch % step_s
        if not total_only:
            per = series.setdefault(str(doc["deployment"]), {})
            if start not in per:
                per[start] = Step(start)
            per[start].add(doc)
        if start not in total:
            total[start] = Step(start)
        total[start].add(doc, client_view=True)
    series[ENDPOINT_TOTAL] = total
    return series
