"""Prometheus metrics of one inference server, served on their own port.

With several worker processes each worker writes its values to files in
`PROMETHEUS_MULTIPROC_DIR` (prometheus_client's multiprocess mode) and the
parent process serves their sum; with one process the values live in memory.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector

# Scoring on loopback takes tens of microseconds to seconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip


# Every family carries the instance's endpoint and deployment (Azure's dimensions), so
# one Prometheus scrape of many instances is grouped the way the metrics service is.
SCOPE = ["endpoint", "deployment"]


def scope_from_env() -> tuple[str, str]:
    """The provisioner names the instance's endpoint and deployment (Azure's variables)."""
    return (
        os.environ.get("AZUREML_ENDPOINT_NAME", ""),
        os.environ.get("AZUREML_DEPLOYMENT_NAME", ""),
    )


class Metrics:
    """Counters the server updates per request; label children are cached for speed."""

    def __init__(self, registry: CollectorRegistry, scope: tuple[str, str] = ("", "")) -> None:
        self._scope = scope
        self.requests = Counter(
            "sluice_inference_requests",
            "HTTP requests answered, by route and status code",
            [*SCOPE, "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "sluice_inference_request_duration_seconds",
            "Time from a request's arrival to its answer, by route",
            [*SCOPE, "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.run_latency = Histogram(
            "sluice_inference_run_duration_seconds",
            "Time spent in the scoring script's run()",
            SCOPE,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(*scope)
        self.in_flight = Gauge(
            "sluice_inference_requests_in_flight",
            "Scoring requests being run or waiting for a slot",
            SCOPE,
            registry=registry,
            multiprocess_mode="livesum",
        ).labels(*scope)
        self.batch_rows = Histogram(
            "sluice_inference_batch_rows",
            "Rows per run() call under adaptive batching",
            SCOPE,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=registry,
        ).labels(*scope)
        self.errors = Counter(
            "sluice_inference_errors",
            "Scoring requests that failed, by kind",
            [*SCOPE, "kind"],
            registry=registry,
        )
        self.collected_dropped = Counter(
            "sluice_inference_collected_dropped",
            "Data collector records not written, by reason (queue_full, quota, write_error)",
            [*SCOPE, "reason"],
            registry=registry,
        )
        self.observe_run = _observer(self.run_latency)
        self._requests: dict[tuple[str, int], Callable[[], None]] = {}
        self._latency: dict[str, Callable[[float], None]] = {}
        self._errors: dict[str, Callable[[], None]] = {}

    def track_in_flight(self, count: Callable[[], int]) -> Callable[[int], None] | None:
        """Export `count()` as the in-flight gauge; returns what to call when it changes.

        In one process the gauge reads `count()` when scraped, so requests do
        nothing for it (None); worker processes (multiprocess mode) must write every
        change to their file, which the parent sums.
        """
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return self.in_flight.set
        self.in_flight.set_function(count)
        return None

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        count = self._requests.get(key)
        if count is None:
            count = self._requests[key] = self.requests.labels(*self._scope, route, str(status)).inc
        count()
        timer = self._latency.get(route)
        if timer is None:
            timer = self._latency[route] = _observer(self.latency.labels(*self._scope, route))
        timer(seconds)

    def error(self, kind: str) -> None:
        count = self._errors.get(kind)
        if count is None:
            count = self._errors[kind] = self.errors.labels(*self._scope, kind).inc
        count()

    def dropped(self, reason: str, count: int) -> None:
        self.collected_dropped.labels(*self._scope, reason).inc(count)


def _observer(histogram: Histogram) -> Callable[[float], None]:
    """`observe` of one labelled histogram, without prometheus_client's per-call work.

    Its `observe` checks observability and exemplars and walks the buckets in a
    Python loop; this adds to the sum and to the bucket found by bisection, on the
    child's own values (in memory, or the worker's multiprocess file). Those are
    prometheus_client's internals: services/inference/tests/test_metrics.py checks
    that the exposition is the same as with its `observe`. Measured in
    bench/README.md ("inference").
    """
    bounds = list(histogram._upper_bounds)
    buckets = histogram._buckets
    total = histogram._sum

    def observe(amount: float) -> None:
        total.inc(amount)
        buckets[bisect_left(bounds, amount)].inc(1)

    return observe


def multiprocess_registry() -> CollectorRegistry:
    """A registry that sums the files every worker writes in PROMETHEUS_MULTIPROC_DIR."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> None:
    """Serve `registry` at http://host:port/metrics from a background thread of this process."""
    start_http_server(port, addr=host, registry=registry)
