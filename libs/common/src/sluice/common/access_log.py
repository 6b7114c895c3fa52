"""The access-log record: what Envoy tells the metrics service about each request.

The traffic controller configures Envoy's fluentd access logger with `record()`; the
metrics service reads it with `parse()` (forward.py inlines the same split in its hot
loop). One place for both sides of the contract, and `render()`, the record Envoy would
send for an `Entry`, for tests and benchmarks. Only what the metrics and `sluice
online-endpoint logs` read.

The record has two keys, not one per field: `TEXT`, the fields below as one line
separated by spaces, as Envoy's text log writes them (an absent value is "-"; the path
comes last and may hold anything, so the line is split at most FIELDS - 1 times), and
`REQUEST_ID` on its own, because a client on an internal network may send its own
`x-request-id` (any text; Envoy's JSON escapes it). Why: Envoy's fluentd logger formats
the record as JSON and parses that JSON again into msgpack, and that parse costs per key;
with one key per field (15) the log added ~143k instructions to Envoy's ~461k per
request, with this record ~60k, and the receiver unpacks a third of the msgpack objects
(bench/README.md, "metrics").

Attribution comes from metadata the traffic controller puts on its resources, never from
names: the route's `endpoint` (also on Envoy's own replies, 401/404/no healthy instance)
and the upstream host's `deployment` (the instance that served: absent when Envoy
answered itself, even though the route named a cluster). Mirrored copies are logged by
the router's upstream log, where the host's `endpoint` names the endpoint; their records
also carry `MIRROR: 1`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

METADATA_NAMESPACE = "sluice"
TAG = "sluice"  # the Forward protocol's tag of every message

TEXT = "f"  # the fields of `FIELDS`, space-separated
REQUEST_ID = "id"
MIRROR = "mirror"  # 1 on the entries of mirrored copies (the router's upstream log)
ABSENT = "-"  # Envoy's text for a value it does not have

# The line's fields in order, each with its Envoy command.
FIELDS: tuple[tuple[str, str], ...] = (
    ("endpoint", f"%METADATA(ROUTE:{METADATA_NAMESPACE}:endpoint)%"),
    ("deployment", f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:deployment)%"),
    ("start_ms", "%START_TIME(%s%3f)%"),  # request start, ms since the epoch
    ("us", "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%"),  # until the last byte to the client
    ("status", "%RESPONSE_CODE%"),  # 0: no response at all
    ("flags", "%RESPONSE_FLAGS%"),  # Envoy's short response flags: "UH", "UO,URX"
    ("in_h", "%REQUEST_HEADERS_BYTES%"),
    ("in_b", "%BYTES_RECEIVED%"),
    ("out_h", "%RESPONSE_HEADERS_BYTES%"),
    ("out_b", "%BYTES_SENT%"),
    ("method", "%REQ(:METHOD)%"),
    ("upstream", "%UPSTREAM_HOST%"),  # host:port of the instance that answered
    ("path", "%REQ(:PATH)%"),  # last: it may contain spaces
)
# The mirror log's record: the copy's endpoint from its host, its time until its answer.
MIRRORED = {
    "endpoint": f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:endpoint)%",
    "us": "%COMMON_DURATION(DS_RX_BEG:US_RX_END:us)%",
}
SPLITS = len(FIELDS) - 1


class Entry(NamedTuple):
    """One request as the metrics service reads it ("" and 0 where Envoy had no value)."""

    endpoint: str
    deployment: str
    start_ms: int
    duration_us: int
    status: int
    flags: str
    request_header_bytes: int
    request_body_bytes: int
    response_header_bytes: int
    response_body_bytes: int
    method: str
    upstream: str
    path: str
    request_id: str = ""
    mirror: bool = False

    @property
    def bytes_in(self) -> int:
        return self.request_header_bytes + self.request_body_bytes

    @property
    def bytes_out(self) -> int:
        return self.response_header_bytes + self.response_body_bytes


def record(*, mirror: bool = False) -> dict[str, str | int]:
    """The fluentd access logger's `record`: each key's Envoy format."""
    line = " ".join((MIRRORED.get(name) if mirror else None) or cmd for name, cmd in FIELDS)
    fields: dict[str, str | int] = {TEXT: line, REQUEST_ID: "%REQ(X-REQUEST-ID)%"}
    if mirror:
        fields[MIRROR] = 1
    return fields


def _text(value: str) -> str:
    return "" if value == ABSENT else value


def _number(value: str) -> int:
    return 0 if value == ABSENT else int(value)


def parse(record: Any) -> Entry:
    """A record as Envoy sent it -> an Entry. ValueError (or TypeError, KeyError) if it is
    not one: a line of the wrong length, a field that should be a number and is not."""
    values = record[TEXT].split(" ", SPLITS)
    if len(values) != len(FIELDS):
        raise ValueError(f"an access-log line of {len(values)} fields, not {len(FIELDS)}")
    ep, dep, start, us, status, flags, in_h, in_b, out_h, out_b, method, upstream, path = values
    return Entry(
        _text(ep),
        _text(dep),
        _number(start),
        _number(us),
        _number(status),
        _text(flags),
        _number(in_h),
        _number(in_b),
        _number(out_h),
        _number(out_b),
        _text(method),
        _text(upstream),
        path,
        record.get(REQUEST_ID) or "",
        record.get(MIRROR) == 1,
    )


def render(entry: Entry) -> dict[str, Any]:
    """The record Envoy's logger sends for `entry` (tests, benchmarks)."""
    values = [
        entry.endpoint,
        entry.deployment,
        entry.start_ms,
        entry.duration_us,
        entry.status,
        entry.flags,
        entry.request_header_bytes,
        entry.request_body_bytes,
        entry.response_header_bytes,
        entry.response_body_bytes,
        entry.method,
        entry.upstream,
    ]
    line = " ".join(str(v) if v != "" else ABSENT for v in values) + " " + entry.path
    fields: dict[str, Any] = {TEXT: line, REQUEST_ID: entry.request_id or None}
    if entry.mirror:
        fields[MIRROR] = 1
    return fields
