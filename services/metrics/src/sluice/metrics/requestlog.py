"""Recent requests per endpoint, from Envoy's access log: `sluice online-endpoint logs`.

The access-log receiver (forward.py) hands every batch of records here too. Each endpoint
keeps its newest `PER_ENDPOINT` records (the decoded records themselves, not copies:
adding one is reading the line's first field and a deque append, so ingest stays fast;
they are parsed when queried), at most `MAX_ENDPOINTS` endpoints (the least recently
logged one is forgotten first). Mirrored copies are left
out: these are the requests clients sent. The buffer lives in memory, so it holds what
this replica received since it started; durable request history is the metrics'
minute buckets (docs/metrics.md).

`RequestLogsApi` (proto/sluice/v1/requestlogs.proto) filters by deployment, status
class or code and age, and converts only what it returns.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

import grpc

from sluice.common import access_log as f
from sluice.metrics.buckets import FAILURE_FLAGS
from sluice.v1 import requestlogs_pb2, requestlogs_pb2_grpc

PER_ENDPOINT = 2000
MAX_ENDPOINTS = 500
DEFAULT_LIMIT = 100
MAX_LIMIT = PER_ENDPOINT
SERVICE_NAME = "sluice.v1.RequestLogs"


class RecentRequests:
    """The newest access-log records of each endpoint, bounded."""

    def __init__(self, per_endpoint: int = PER_ENDPOINT, max_endpoints: int = MAX_ENDPOINTS):
        self._per_endpoint = per_endpoint
        self._max_endpoints = max_endpoints
        self._by_endpoint: OrderedDict[str, deque[Any]] = OrderedDict()

    def add(self, entries: Iterable[Any]) -> None:
        """`[time, record]` entries as the Forward protocol carries them."""
        by_endpoint = self._by_endpoint
        for _time, record in entries:
            line = record[f.TEXT]
            endpoint = line[: line.find(" ")]  # the first field (forward.py checked the line)
            if endpoint == f.ABSENT or record.get(f.MIRROR) == 1:
                continue
            kept = by_endpoint.get(endpoint)
            if kept is None:
                kept = by_endpoint[endpoint] = deque(maxlen=self._per_endpoint)
                if len(by_endpoint) > self._max_endpoints:
                    by_endpoint.popitem(last=False)
            elif len(by_endpoint) > 1:
                by_endpoint.move_to_end(endpoint)
            kept.append(record)

    def query(
        self,
        endpoint: str,
        *,
        deployment: str = "",
        status: str = "",
        since_s: float = 0,
        limit: int = DEFAULT_LIMIT,
        now: float | None = None,
    ) -> tuple[list[f.Entry], int, int]:
        """(the newest `limit` matching entries, oldest first; how many matched; how many kept)."""
        kept = self._by_endpoint.get(endpoint) or deque()
        accept = status_filter(status)
        cutoff_ms = ((now or time.time()) - since_s) * 1000 if since_s else 0.0
        matched = [
            e
            for e in map(f.parse, kept)
            if (not deployment or e.deployment == deployment)
            and accept(e.status)
            and (not cutoff_ms or e.start_ms >= cutoff_ms)
        ]
        return matched[-limit:] if limit else [], len(matched), len(kept)


def status_filter(status: str) -> Any:
    """`5xx` (a class), `404` (a code) or "" (all) -> a test of a status code."""
    text = status.strip().lower()
    if not text:
        return lambda code: True
    if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
        first = int(text[0])
        return lambda code: code // 100 == first
    if text.isdigit() and 100 <= int(text) <= 599:
        wanted = int(text)
        return lambda code: code == wanted
    raise ValueError(f"status must be a class such as 5xx or a code such as 404, got {status!r}")


def entry_message(entry: f.Entry) -> Any:
    """An entry as the API returns it."""
    flags = [FAILURE_FLAGS[x] for x in entry.flags.split(",") if x in FAILURE_FLAGS]
    message = requestlogs_pb2.RequestLogEntry(
        endpoint_name=entry.endpoint,
        deployment_name=entry.deployment,
        method=entry.method,
        path=entry.path,
        status=entry.status,
        duration_ms=entry.duration_us / 1000.0,
        request_id=entry.request_id,
        bytes_in=entry.bytes_in,
        bytes_out=entry.bytes_out,
        upstream=entry.upstream,
        response_flags=",".join(dict.fromkeys(flags)),
    )
    message.time.FromMilliseconds(entry.start_ms)
    return message


class RequestLogsApi(requestlogs_pb2_grpc.RequestLogsServicer):
    def __init__(self, recent: RecentRequests):
        self._recent = recent

    async def GetRequestLogs(  # noqa: N802 - the proto's method name
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        if not request.endpoint_name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "endpoint_name is required")
        if request.since_seconds < 0 or not 0 <= request.limit <= MAX_LIMIT:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"since_seconds cannot be negative and limit must be 0-{MAX_LIMIT}",
            )
        try:
            entries, matched, kept = self._recent.query(
                request.endpoint_name,
                deployment=request.deployment_name,
                status=request.status,
                since_s=request.since_seconds,
                limit=request.limit or DEFAULT_LIMIT,
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable: abort raises") from exc
        return requestlogs_pb2.RequestLogPage(
            entries=[entry_message(e) for e in entries], matched=matched, kept=kept
        )
