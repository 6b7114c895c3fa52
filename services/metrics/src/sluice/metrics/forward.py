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

Adding a record is one split of its line and plain dictionary arithmetic on the event
loop (no await), fed straight from the socket by a streaming unpacker. A record that does
not parse closes its connection like a message that is not Forward mode.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any

import msgpack

from sluice.common import access_log as f
from sluice.common.access_log import ABSENT
from sluice.common.log import get_logger
from sluice.common.pki import Identity
from sluice.metrics.buckets import FAILURE_FLAGS, Buckets
from sluice.metrics.sketch import key_of as sketch_key

log = get_logger(__name__)
STATUS_CLASSES = {"1": "1xx", "2": "2xx", "3": "3xx", "4": "4xx", "5": "5xx"}
MAX_BUFFER = 64 * 1024 * 1024  # one message (Envoy's buffer is 256 KiB) may not exceed this


class IngestStats:
    """Counters of the receiver itself, exported on /metrics."""

    def __init__(self) -> None:
        self.entries = 0
        self.unattributed = 0  # no endpoint: requests for no endpoint (the catch-all 404)
        self.streams = 0
        self.malformed = 0  # messages that were not Forward mode: their connection closed


def add_records(buckets: Buckets, stats: IngestStats, entries: Iterable[Any]) -> None:
    """Count `[time, record]` entries into `buckets`. The hot loop of the service: the
    record's line split in place (`access_log.parse` does the same, field by field, for
    readers that are not in a hurry); ValueError on a record that is not one."""
    get_bucket = buckets.get
    key_of = sketch_key
    n = 0
    for _time, record in entries:
        n += 1
        values = record[f.TEXT].split(" ", f.SPLITS)
        if len(values) != len(f.FIELDS):
            raise ValueError(f"an access-log line of {len(values)} fields, not {len(f.FIELDS)}")
        endpoint, deployment, start, us, status, flags, in_h, in_b, out_h, out_b = values[:10]
        if endpoint == ABSENT:
            stats.unattributed += 1
            continue
        bucket = get_bucket(
            endpoint,
            "" if deployment == ABSENT else deployment,
            int(start) // 1000,
            record.get(f.MIRROR) == 1,
        )
        bucket.requests += 1
        latency = (0 if us == ABSENT else int(us)) / 1000.0
        bucket.latency_sum_ms += latency
        k = key_of(latency)
        bins = bucket.latency
        bins[k] = bins.get(k, 0) + 1
        code = int(status)
        cls = STATUS_CLASSES.get(status[0], "0xx")  # "0": no response at all
        counts = bucket.status_class
        counts[cls] = counts.get(cls, 0) + 1
        counts = bucket.status_code
        counts[status] = counts.get(status, 0) + 1
        bucket.bytes_in += int(in_h) + int(in_b)
        bucket.bytes_out += int(out_h) + int(out_b)
        if flags != ABSENT and (code >= 400 or code == 0):
            for flag in flags.split(","):
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
        except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException) as exc:
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
