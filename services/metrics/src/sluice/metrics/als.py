"""Envoy's gRPC access-log service (envoy.service.accesslog.v3): entries -> minute buckets.

The traffic controller puts `{endpoint, deployment}` metadata on every cluster and
endpoint route, and tells Envoy's access loggers to copy it into custom tags
(sluice.traffic.xds.resources). Attribution reads those tags only, never resource
names. Entries of the router's mirror log carry the `sluice.mirror` tag: they count
for the mirror target and as mirrored. Envoy's own replies before any upstream (401,
404) carry only the route's endpoint and are kept under deployment "".

Adding an entry is plain dictionary arithmetic on the event loop (no await), which
is what keeps ingest above 30,000 entries/s on one core (bench/metrics).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from sluice.common.log import get_logger
from sluice.metrics.buckets import FAILURE_FLAGS, Buckets
from sluice.metrics.sketch import key_of as sketch_key

log = get_logger(__name__)
SERVICE_NAME = "envoy.service.accesslog.v3.AccessLogService"
# Set by the traffic controller (sluice.traffic.xds.resources.TAG_*).
TAG_ENDPOINT = "sluice.endpoint"
TAG_DEPLOYMENT = "sluice.deployment"
TAG_ROUTE_ENDPOINT = "sluice.route_endpoint"
TAG_MIRROR = "sluice.mirror"
STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
STATUS_CODES = {code: str(code) for code in range(100, 600)}


class IngestStats:
    """Counters of the receiver itself, exported on /metrics."""

    def __init__(self) -> None:
        self.entries = 0
        self.unattributed = 0  # no endpoint tag: requests for no endpoint (the catch-all 404)
        self.streams = 0


def add_entries(buckets: Buckets, stats: IngestStats, entries: Iterable[Any]) -> None:
    """Count HTTPAccessLogEntry messages into `buckets`.

    The hot loop of the service: tags are read with `[]` (a missing key reads "", and
    upb's map `get` costs ten times more), the sketch key is computed inline.
    """
    get_bucket = buckets.get
    key_of = sketch_key
    failure_flags = FAILURE_FLAGS.items()
    n = 0
    for entry in entries:
        n += 1
        common = entry.common_properties
        tags = common.custom_tags
        endpoint = tags[TAG_ENDPOINT] or tags[TAG_ROUTE_ENDPOINT]
        if not endpoint:
            stats.unattributed += 1
            continue
        bucket = get_bucket(
            endpoint, tags[TAG_DEPLOYMENT], common.start_time.seconds, tags[TAG_MIRROR] == "1"
        )
        bucket.requests += 1
        took = common.time_to_last_downstream_tx_byte
        if not (took.seconds or took.nanos):  # the mirror log (upstream side): until the
            took = common.time_to_last_upstream_rx_byte  # copy's answer was read
        latency = took.seconds * 1000.0 + took.nanos / 1e6
        bucket.latency_sum_ms += latency
        k = key_of(latency)
        bins = bucket.latency
        bins[k] = bins.get(k, 0) + 1
        response = entry.response
        code = response.response_code.value
        cls = STATUS_CLASSES.get(code // 100, "0xx")  # 0: no response at all
        counts = bucket.status_class
        counts[cls] = counts.get(cls, 0) + 1
        counts = bucket.status_code
        scode = STATUS_CODES.get(code) or str(code)
        counts[scode] = counts.get(scode, 0) + 1
        request = entry.request
        bucket.bytes_in += request.request_headers_bytes + request.request_body_bytes
        bucket.bytes_out += response.response_headers_bytes + response.response_body_bytes
        if code >= 400 or code == 0:
            flags = common.response_flags
            for flag, name in failure_flags:
                if getattr(flags, flag):
                    bucket.failures[name] = bucket.failures.get(name, 0) + 1
    stats.entries += n


class AccessLogReceiver(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """Each Envoy worker holds one stream per log name; entries arrive in batches."""

    def __init__(self, buckets: Buckets, stats: IngestStats, recent: Any = None):
        self._buckets = buckets
        self.stats = stats
        self._recent = recent  # requestlog.RecentRequests: the newest entries, for `logs`

    async def StreamAccessLogs(  # noqa: N802 - the proto's method name
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> Any:
        self.stats.streams += 1
        try:
            async for message in request_iterator:
                if message.HasField("http_logs"):
                    add_entries(self._buckets, self.stats, message.http_logs.log_entry)
                    if self._recent is not None:
                        self._recent.add(message.http_logs.log_entry)
        finally:
            self.stats.streams -= 1
        return als_pb2.StreamAccessLogsResponse()
