"""Every service's own Prometheus endpoint, and the measurements they all share.

`start_exporter` serves prometheus_client's default registry over HTTP on
`SLUICE_PROMETHEUS_PORT` (a thread; off when unset). Every `GrpcServer` counts its
calls by method and status code and times them in `GRPC_CALLS`/`GRPC_SECONDS`;
`RECONCILE_SECONDS`,
`XDS_PUSHES`, `XDS_RESPONSES` and `EVENT_LAG_SECONDS` are the families the
provisioner, the traffic controller and the event subscribers fill in.
"""

from __future__ import annotations

import time
from datetime import datetime

from prometheus_client import Counter, Histogram, start_http_server

from sluice.common.log import get_logger
from sluice.common.settings import Settings

log = get_logger(__name__)

GRPC_CALLS = Counter(
    "sluice_grpc_server_handled",
    "gRPC calls handled, by method and status code",
    ["method", "code"],
)
GRPC_SECONDS = Histogram(
    "sluice_grpc_server_handling_seconds",
    "Time to handle a gRPC call (streams: until the stream ends)",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_SECONDS = Histogram(
    "sluice_reconcile_seconds",
    "Duration of one reconcile pass (provisioner: per deployment; traffic: per snapshot)",
    ["service"],
)
XDS_PUSHES = Counter("sluice_xds_pushes", "xDS responses sent to Envoy, by type", ["type"])
XDS_RESPONSES = Counter(
    "sluice_xds_acks", "Envoy's answers to xDS pushes, by type and result", ["type", "result"]
)
EVENT_LAG_SECONDS = Histogram(
    "sluice_event_lag_seconds",
    "Time from an event's publication (its CloudEvents time) to its handling",
    ["service"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300),
)


def observe_lag(service: str, published: datetime) -> None:
    """Record how long an event took from its publication to `service`'s handler."""
    EVENT_LAG_SECONDS.labels(service).observe(max(0.0, time.time() - published.timestamp()))


def start_exporter(settings: Settings) -> int | None:
    """Serve /metrics when SLUICE_PROMETHEUS_PORT is set; returns the port."""
    if settings.prometheus_port is None:
        return None
    server, _ = start_http_server(settings.prometheus_port, addr=settings.host)
    port = int(server.server_port)
    log.info("prometheus_serving", address=f"http://{settings.host}:{port}/metrics")
    return port
