"""The access-log record: what Envoy tells the metrics service about each request.

The traffic controller configures Envoy's fluentd access logger with `record()`
(keys -> Envoy format commands); the metrics service reads the same keys. One place
for both sides of the contract. Only what the metrics and `sluice online-endpoint
logs` read, ~200 bytes of msgpack per request, where the gRPC access log sent ~650
bytes of protobuf with fields nothing read (bench/metrics).

Attribution comes from metadata the traffic controller puts on its resources, never
from names: the upstream host's `{endpoint, deployment}` (the instance that served:
empty when Envoy answered itself, 401/404/no healthy instance, even though the route
named a cluster) and the route's `endpoint` (also set on Envoy's own replies). Numbers
arrive as numbers (Envoy's JSON formatter keeps types), an absent value as None, no
response flag as "-".
"""

from __future__ import annotations

METADATA_NAMESPACE = "sluice"
TAG = "sluice"  # the Forward protocol's tag of every message

ENDPOINT = "endpoint"  # the upstream host's: the deployment that served
DEPLOYMENT = "deployment"
ROUTE_ENDPOINT = "route_endpoint"  # the route's: Envoy's own replies too
MIRROR = "mirror"  # 1 on the entries of mirrored copies (the router's upstream log)
START_MS = "start_ms"  # request start, ms since the epoch
DURATION_US = "us"  # until the last byte to the client (mirror: from the copy's upstream)
STATUS = "status"  # 0: no response at all
FLAGS = "flags"  # Envoy's short response flags, comma-separated ("UH", "UO,URX")
REQUEST_HEADER_BYTES = "in_h"
REQUEST_BODY_BYTES = "in_b"
RESPONSE_HEADER_BYTES = "out_h"
RESPONSE_BODY_BYTES = "out_b"
METHOD = "method"
PATH = "path"
REQUEST_ID = "request_id"
UPSTREAM = "upstream"  # host:port of the instance that answered


def record(*, mirror: bool = False) -> dict[str, str | int]:
    """The fluentd access logger's `record`: each key's Envoy command."""
    ends = "US_RX_END" if mirror else "DS_TX_END"
    fields: dict[str, str | int] = {
        ENDPOINT: f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:endpoint)%",
        DEPLOYMENT: f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:deployment)%",
        ROUTE_ENDPOINT: f"%METADATA(ROUTE:{METADATA_NAMESPACE}:endpoint)%",
        START_MS: "%START_TIME(%s%3f)%",
        DURATION_US: f"%COMMON_DURATION(DS_RX_BEG:{ends}:us)%",
        STATUS: "%RESPONSE_CODE%",
        FLAGS: "%RESPONSE_FLAGS%",
        REQUEST_HEADER_BYTES: "%REQUEST_HEADERS_BYTES%",
        REQUEST_BODY_BYTES: "%BYTES_RECEIVED%",
        RESPONSE_HEADER_BYTES: "%RESPONSE_HEADERS_BYTES%",
        RESPONSE_BODY_BYTES: "%BYTES_SENT%",
        METHOD: "%REQ(:METHOD)%",
        PATH: "%REQ(:PATH)%",
        REQUEST_ID: "%REQ(X-REQUEST-ID)%",
        UPSTREAM: "%UPSTREAM_HOST%",
    }
    if mirror:
        fields[MIRROR] = 1
    return fields
