"""Spans as JSON lines under the state directory, and reading them back as trees.

The SDK is imported here, so only a process that traces (or `sluice trace show`)
loads it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import TraceFlags

log = logging.getLogger(__name__)
MAX_FILE_BYTES = 64 * 1024 * 1024  # then the file rolls over to <name>.1 (one kept)


def span_record(span: ReadableSpan, service: str, shown: Mapping[str, Any]) -> dict[str, Any]:
    """One span as a JSON object (ids in W3C hex, times in ns since the epoch).

    `shown`: the process's own attributes (endpoint, deployment, instance), which are on
    its resource rather than on each span (`resource_attributes`). It runs once per span
    of a traced inference server, in the thread that serves requests, so it reads the
    span's fields, not its public properties: those copy the attributes, events and links
    into new containers (a mapping proxy, two tuples, locks taken) on every read, which
    cost as much as the rest of the record (bench/README.md, tracing). The fields are
    those `ReadableSpan.__init__` sets; test_trace_files reads every one back.
    """
    ctx = span._context
    assert ctx is not None
    parent = span._parent
    status = span._status
    attributes = span._attributes
    if type(attributes) is BoundedAttributes:  # the SDK's spans: its plain dict within
        attributes = attributes._dict
    events = span._events
    links = span._links
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent else None,
        "name": span._name,
        "service": service,
        "kind": span._kind._name_,  # Enum.name is a slower property
        "start": span._start_time,
        "end": span._end_time,
        "status": status.status_code._name_,
        "status_message": status.description,
        "attributes": {**shown, **attributes} if attributes else shown,
        "events": [
            {"name": e.name, "time": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in events
        ]
        if events
        else [],
        "links": [f"{link.context.trace_id:032x}" for link in links] if links else [],
    }


def resource_attributes(resource: Resource) -> dict[str, Any]:
    """The attributes of a process's resource that `sluice trace show` prints on its spans."""
    return {k: v for k, v in resource.attributes.items() if k.startswith("sluice.")}


class JsonLinesExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line, rolling over at 64 MiB."""

    def __init__(self, path: Path, service: str) -> None:
        self.path = path
        self._service = service
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        lines = []
        resource: Resource | None = None  # every span of a process has its one resource
        shown: dict[str, Any] = {}
        for span in spans:
            if span.resource is not resource:
                resource = span.resource
                shown = resource_attributes(resource)
            lines.append(orjson.dumps(span_record(span, self._service, shown), default=str))
        data = b"\n".join(lines) + b"\n"
        try:
            with self._lock:
                if self.path.exists() and self.path.stat().st_size > MAX_FILE_BYTES:
                    self.path.replace(self.path.with_name(self.path.name + ".1"))
                with self.path.open("ab") as out:
                    out.write(data)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class InlineBatchProcessor(SpanProcessor):
    """Exports finished spans in batches from the thread that ends them.

    The SDK's BatchSpanProcessor hands spans to an exporter thread of its own. In a
    Python process that thread takes the GIL from the one serving requests, and the
    hand-offs cost more CPU than writing the spans (bench/tracing: ~12 us per traced
    request on top of the serialization). Writing JSON lines to a local file is quick,
    so here the end of a local root span (a request's, a gRPC call's, a command's) exports
    the batch once it holds `BATCH` spans (well under a millisecond of work), where that
    span ends, and a timer thread exports what a quiet process leaves behind every
    `DELAY_S`. For exporters that wait on a network (OTLP), the SDK's
    BatchSpanProcessor is the right one.
    """

    BATCH = 128
    DELAY_S = 0.5

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter
        self._spans: list[ReadableSpan] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._timer = threading.Thread(target=self._every_delay, name="span-export", daemon=True)
        self._timer.start()

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context  # (once per span of a traced server: properties read once)
        if context is None or not context.trace_flags & TraceFlags.SAMPLED:
            return
        parent = span.parent
        with self._lock:
            self._spans.append(span)
            # Only a process's outermost span writes, once it ends: never in the middle of
            # the work it measures (the inference server times run() to choose how to call it).
            if len(self._spans) < self.BATCH or (parent is not None and not parent.is_remote):
                return
            batch, self._spans = self._spans, []
        self._export(batch)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            batch, self._spans = self._spans, []
        if batch:
            self._export(batch)
        return True

    def shutdown(self) -> None:
        self._stopped.set()
        self.force_flush()
        self._exporter.shutdown()

    def _every_delay(self) -> None:
        while not self._stopped.wait(self.DELAY_S):
            self.force_flush()

    def _export(self, batch: list[ReadableSpan]) -> None:
        try:  # a span's end must never fail the request that ends it
            self._exporter.export(batch)
        except Exception:
            log.exception("span export failed")


def read_spans(folder: Path) -> Iterator[dict[str, Any]]:
    """Every span recorded under `folder` (the state directory's `traces`), in file order."""
    for path in sorted(folder.rglob("*.jsonl*")):
        with contextlib.suppress(OSError), path.open("rb") as lines:
            for line in lines:
                with contextlib.suppress(orjson.JSONDecodeError):
                    yield orjson.loads(line)


def trace_spans(folder: Path, trace_id: str) -> list[dict[str, Any]]:
    """The spans of one trace, by start time."""
    wanted = trace_id.lower().removeprefix("0x")
    spans = [s for s in read_spans(folder) if s.get("trace_id") == wanted]
    return sorted(spans, key=lambda s: s.get("start") or 0)


def tree_lines(spans: list[dict[str, Any]]) -> list[str]:
    """The spans of a trace as an indented tree: service, name, duration, status, attributes."""
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span.get("parent_id") if span.get("parent_id") in ids else None
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in children.get(parent, []):
            ms = ((span.get("end") or 0) - (span.get("start") or 0)) / 1e6
            status = "" if span.get("status") == "UNSET" else f" [{span.get('status')}]"
            attrs = " ".join(
                f"{k}={v}" for k, v in (span.get("attributes") or {}).items() if k.startswith(SHOWN)
            )
            lines.append(
                f"{'  ' * depth}{span.get('service')}: {span['name']} {ms:.2f} ms{status}"
                + (f"  {attrs}" if attrs else "")
            )
            for event in span.get("events") or []:
                message = (event.get("attributes") or {}).get("exception.message", "")
                lines.append(f"{'  ' * (depth + 1)}! {event['name']} {message}".rstrip())
            walk(span["span_id"], depth + 1)

    walk(None, 0)
    return lines


SHOWN = ("sluice.", "http.response.status_code", "rpc.method", "db.operation", "db.statement")
