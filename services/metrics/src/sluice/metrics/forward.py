"""Envoy's access log over the Fluentd Forward protocol -> minute buckets.

Envoy's fluentd access logger (`envoy.access_loggers.fluentd`) formats each request
as the compact record of sluice.common.access_log, buffers the records per worker
thread and, every second or when the buffer is full, writes one Forward-mode message
on a TCP stream (here with the platform's mutual TLS): msgpack
`[tag, [[time, record], [time, record], ...]]`. It asks for no acknowledgement (no
`chunk` option) and reads nothing back. What Envoy could not send (buffer full,
connection down) it counts in `access_logs.fluentd.<prefix>.entries_lost`, which its
stats sink streams to this service (envoy_stats.py) and /metrics exports.

Attribution reads the record's metadata fields only, never resource names. Records
of the router's mirror log carry `mirror: 1`: they count for the mirror target and as
mirrored. Envoy's own replies before any upstream (401, 404) carry only the route's
endpoint and are kept under deployment "".

Adding a record is plain dictionary arithmetic on the event loop (no await), fed
straight from the socket by a streaming unpacker.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any

import msgpack

from sluice.common import access_log as f
from sluice.common.log import get_logger
from sluice.common.pki import Identity
from sluice.metrics.buckets import FAILURE_FLAGS, Buckets
from sluice.metrics.sketch import key_of as sketch_key

log = get_logger(__name__)
STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
STATUS_CODES = {code: str(code) for code in range(100, 600)}
MAX_BUFFER = 64 * 1024 * 1024  # one message (Envoy's buffer is 256 KiB) may not exceed this


class IngestStats:
    """Counters of the receiver itself, exported on /metrics."""

    def __init__(self) -> None:
        self.entries = 0
        self.unattributed = 0  # no endpoint: requests for no endpoint (the catch-all 404)
        self.streams = 0
        self.malformed = 0  # messages that were not Forward mode: their connection closed


def number(value: Any) -> int:
    """A formatted number: an int, or a string of digits (START_TIME), or absent."""
    if type(value) is int:
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def add_records(buckets: Buckets, stats: IngestStats, entries: Iterable[Any]) -> None:
    """Count `[time, record]` entries into `buckets`. The hot loop of the service."""
    get_bucket = buckets.get
    key_of = sketch_key
    n = 0
    for _time, record in entries:
        n += 1
        get = record.get
        endpoint = get(f.ENDPOINT) or get(f.ROUTE_ENDPOINT)
        if not endpoint:
            stats.unattributed += 1
            continue
        bucket = get_bucket(
            endpoint,
            get(f.DEPLOYMENT) or "",
            number(get(f.START_MS)) // 1000,
            get(f.MIRROR) == 1,
        )
        bucket.requests += 1
        latency = (get(f.DURATION_US) or 0) / 1000.0
        bucket.latency_sum_ms += latency
        k = key_of(latency)
        bins = bucket.latency
        bins[k] = bins.get(k, 0) + 1
        code = get(f.STATUS) or 0
        cls = STATUS_CLASSES.get(code // 100, "0xx")  # 0: no response at all
        counts = bucket.status_class
        counts[cls] = counts.get(cls, 0) + 1
        counts = bucket.status_code
        scode = STATUS_CODES.get(code) or str(code)
        counts[scode] = counts.get(scode, 0) + 1
        bucket.bytes_in += (get(f.REQUEST_HEADER_BYTES) or 0) + (get(f.REQUEST_BODY_BYTES) or 0)
        bucket.bytes_out += (get(f.RESPONSE_HEADER_BYTES) or 0) + (get(f.RESPONSE_BODY_BYTES) or 0)
        if code >= 400 or code == 0:
            for flag in (get(f.FLAGS) or "").split(","):
                name = FAILURE_FLAGS.get(flag)
                if name:
                    bucket.failures[name] = bucket.failures.get(name, 0) + 1
    stats.entries += n


class ForwardProtocol(asyncio.Protocol):
    """One Envoy worker's connection: bytes -> unpacker -> buckets, as they arrive."""

    def __init__(self, buckets: Buckets, stats: IngestStats, recent: Any) -> None:
        self._buckets, self._stats, self._recent = buckets, stats, recent
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_BUFFER)
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._stats.streams += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._stats.streams -= 1

    def data_received(self, data: bytes) -> None:
        self._unpacker.feed(data)
        try:
            for message in self._unpacker:
                self._message(message)
        except (ValueError, TypeError, AttributeError, msgpack.UnpackException) as exc:
            self._stats.malformed += 1
            log.warning("access_log_malformed", error=str(exc)[:200])
            if self._transport is not None:
                self._transport.close()

    def _message(self, message: Any) -> None:
        # Forward mode: [tag, [[time, record], ...]] (the only mode Envoy sends).
        if not (isinstance(message, list) and len(message) >= 2 and isinstance(message[1], list)):
            raise ValueError(f"not a Forward-mode message: {type(message).__name__}")
        entries = message[1]
        add_records(self._buckets, self._stats, entries)
        if self._recent is not None:
            self._recent.add(entries)


def server_tls(identity: Identity) -> ssl.SSLContext:
    """TLS that requires a client certificate of the platform CA (Envoy's), as the gRPC
    port for Envoy does: nobody else can feed requests into the metrics."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(identity.ca))
    context.load_cert_chain(str(identity.cert), str(identity.key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve(
    host: str,
    port: int,
    buckets: Buckets,
    stats: IngestStats,
    recent: Any = None,
    tls: ssl.SSLContext | None = None,
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: ForwardProtocol(buckets, stats, recent), host, port, ssl=tls, reuse_address=True
    )
