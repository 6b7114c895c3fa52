"""Spans as JSON lines under the state directory, and reading them back as trees.

The SDK is imported here, so only a process that traces (or `sluice trace show`)
loads it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import TraceFlags

from sluice.common.untrusted import open_plain, plain_files
from sluice.common.writer_process import WriterProcess, frames

log = logging.getLogger(__name__)
MAX_FILE_BYTES = 64 * 1024 * 1024  # then the file rolls over to <name>.1 (one kept)
MAX_SPAN_LINE = 1024 * 1024  # longer than any span line the writers make


# A span as plain values (what `marshal` sends to a writer process): trace id, span id,
# parent's span id, name, kind, start, end, status, status message, attributes, events
# ((name, time, attributes) each), linked trace ids.
SpanTuple = tuple[
    int,
    int,
    int | None,
    str,
    str,
    int | None,
    int | None,
    str,
    str | None,
    dict[str, Any] | None,
    list[tuple[str, int, dict[str, Any]]] | None,
    list[int] | None,
]
# What a writer process is sent per span: its `SpanTuple`, or a request's span's followed by
# the id, start and end of its run() span when that span ships with it (`run_span`).
Shipped = tuple[Any, ...]
SPAN_FIELDS = 12  # the values of a `SpanTuple`
PAIR = SPAN_FIELDS + 3


def shipped(span: ReadableSpan) -> Shipped:
    """A span's values as a writer process is sent them: the inference server's request
    span (`sluice.inference.tracing.LeanSpan`) may carry its run() span's (`_run`)."""
    values = span_tuple(span)
    run = getattr(span, "_run", None)
    return values if run is None else values + run


def run_span(pair: Shipped) -> SpanTuple:
    """The run() span that shipped with its request's span: its child, named "run", with
    no attributes, events, links or status of its own (one with any ships by itself)."""
    trace_id, request_span_id = pair[0], pair[1]
    span_id, start, end = pair[SPAN_FIELDS:PAIR]
    return (trace_id, span_id, request_span_id, "run", "INTERNAL", start, end, "UNSET",
            None, None, None, None)  # fmt: skip


def span_tuple(span: ReadableSpan) -> SpanTuple:
    """One span's fields as plain values.

    It runs once per span of a traced inference server, in the thread that serves
    requests, so it reads the span's fields, not its public properties: those copy the
    attributes, events and links into new containers (a mapping proxy, two tuples, locks
    taken) on every read, which cost as much as the rest of the record (bench/README.md,
    tracing). The fields are those `ReadableSpan.__init__` sets; test_trace_files reads
    every one back.
    """
    ctx = span._context
    assert ctx is not None
    parent = span._parent
    status = span._status
    attributes = span._attributes
    if attributes is not None and type(attributes) is not dict:  # the SDK's bounded container
        attributes = dict(attributes._dict if type(attributes) is BoundedAttributes else attributes)
    events = span._events
    links = span._links
    return (
        ctx[0],  # trace_id: a SpanContext is a tuple, whose fields are properties
        ctx[1],  # span_id
        parent[1] if parent else None,
        span._name,
        span._kind._name_,  # Enum.name is a slower property
        span._start_time,
        span._end_time,
        status._status_code._name_,
        status._description,
        attributes or None,
        [(e.name, e.timestamp, dict(e.attributes or {})) for e in events] if events else None,
        [link.context.trace_id for link in links] if links else None,
    )


def tuple_record(fields: SpanTuple, service: str, shown: Mapping[str, Any]) -> dict[str, Any]:
    """A span's fields as its JSON object (ids in W3C hex, times in ns since the epoch).

    `shown`: the process's own attributes (endpoint, deployment, instance), which are on
    its resource rather than on each span (`resource_attributes`)."""
    trace_id, span_id, parent_id, name, kind, start, end, status, message, attributes = fields[:10]
    events, links = fields[10], fields[11]
    return {
        "trace_id": f"{trace_id:032x}",
        "span_id": f"{span_id:016x}",
        "parent_id": f"{parent_id:016x}" if parent_id is not None else None,
        "name": name,
        "service": service,
        "kind": kind,
        "start": start,
        "end": end,
        "status": status,
        "status_message": message,
        "attributes": {**shown, **attributes} if attributes else shown,
        "events": [{"name": n, "time": t, "attributes": a} for n, t, a in events] if events else [],
        "links": [f"{trace:032x}" for trace in links] if links else [],
    }


def resource_attributes(resource: Resource) -> dict[str, Any]:
    """The attributes of a process's resource that `sluice trace show` prints on its spans."""
    return {k: v for k, v in resource.attributes.items() if k.startswith("sluice.")}


class JsonLinesFile:
    """A file of JSON lines that rolls over to `<name>.1` (one kept) at 64 MiB."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, data: bytes) -> None:
        """OSError when it cannot be written."""
        with self._lock:
            if self.path.exists() and self.path.stat().st_size > MAX_FILE_BYTES:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
            with self.path.open("ab") as out:
                out.write(data)


# A span's JSON line (`tuple_record`'s keys, in its order) without events or links: what
# orjson.dumps of its dict writes, byte for byte (test_trace_files).
SPAN_LINE = (
    b'{"trace_id":"%032x","span_id":"%016x","parent_id":%s,"name":%s,"service":%s,'
    b'"kind":%s,"start":%d,"end":%d,"status":%s,"status_message":%s,"attributes":%s,'
    b'"events":[],"links":[]}\n'
)


class SpanLines:
    """Spans' fields (`SpanTuple`) as JSON lines, for one service and its shown resource
    attributes: the line orjson.dumps writes for the span's `tuple_record`, put
    together with one bytes `%` from parts made once (the service, the shown attributes,
    each name, kind and status seen): ~1/3 of the cost of building the dict and dumping
    it, in the writer process of every traced instance (bench/README.md, tracing). A span
    with events or links, or without its times, goes through the dict.
    """

    def __init__(self, service: str, shown: Mapping[str, Any]) -> None:
        self.service, self.shown = service, shown
        self._service = orjson.dumps(service)
        self._shown = orjson.dumps(shown, default=str)
        self._texts: dict[str, bytes] = {}  # a name, kind or status -> its JSON

    def __call__(self, batch: Iterable[Shipped]) -> bytes:
        return b"".join([self.line(fields) for fields in batch])

    def line(self, fields: Shipped) -> bytes:
        """A span's line, or a request's span's and its run() span's lines (`run_span`)."""
        if len(fields) == PAIR:
            return self.line(fields[:SPAN_FIELDS]) + self.line(run_span(fields))
        trace_id, span_id, parent_id, name, kind, start, end, status = fields[:8]
        message, attributes, events, links = fields[8:]
        if events or links or start is None or end is None:
            record = tuple_record(fields, self.service, self.shown)
            return orjson.dumps(record, default=str, option=orjson.OPT_APPEND_NEWLINE)
        text = self._texts.get
        return SPAN_LINE % (
            trace_id,
            span_id,
            b'"%016x"' % parent_id if parent_id is not None else b"null",
            text(name) or self._text(name),
            self._service,
            text(kind) or self._text(kind),
            start,
            end,
            text(status) or self._text(status),
            orjson.dumps(message) if message is not None else b"null",
            orjson.dumps({**self.shown, **attributes}, default=str) if attributes else self._shown,
        )

    def _text(self, value: str) -> bytes:
        if len(self._texts) > 1024:  # names are few; a service that makes many keeps 1,024
            self._texts.clear()
        made = self._texts[value] = orjson.dumps(value)
        return made


class JsonLinesExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line, rolling over at 64 MiB."""

    def __init__(self, path: Path, service: str) -> None:
        self.path = path
        self._service = service
        self._file = JsonLinesFile(path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        service = self._service
        shown = _shown(spans)
        data = SpanLines(service, shown)(span_tuple(span) for span in spans)
        try:
            self._file.append(data)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _shown(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """The resource attributes shown on the spans (every span of a process has its one
    resource)."""
    return resource_attributes(spans[0].resource)


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

    def __init__(self, exporter: SpanExporter | None) -> None:
        self._exporter = exporter
        # The spans not yet sent: a deque's appends and pops are thread-safe, so a span's
        # end takes no lock (a request's two spans paid for two: bench/README.md, tracing).
        self._held: deque[ReadableSpan] = deque()
        self._stopped = threading.Event()
        self._timer = threading.Thread(target=self._every_delay, name="span-export", daemon=True)
        self._timer.start()

    def on_end(self, span: ReadableSpan) -> None:
        context = span._context
        if context is None or not context[3] & TraceFlags.SAMPLED:  # (trace_flags)
            return
        parent = span._parent
        self.add(span, parent is not None and not parent[2])  # (is_remote)

    def add(self, span: ReadableSpan, local_child: bool) -> None:
        """Hold one ended span; send the batch when it is full and this span is not
        a child of a span of this process (`local_child`): only a process's outermost span
        writes, once it ends, never in the middle of the work it measures (the inference
        server times run() to choose how to call it)."""
        held = self._held
        held.append(span)
        if local_child or len(held) < self.BATCH:
            return
        self._export(self._take())

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        batch = self._take()
        if batch:
            self._export(batch)
        return True

    def _take(self) -> list[ReadableSpan]:
        """The spans held now, taken out (another thread's `_take` may get some first)."""
        held, batch = self._held, []
        with contextlib.suppress(IndexError):
            for _ in range(len(held)):
                batch.append(held.popleft())
        return batch

    def shutdown(self) -> None:
        self._stopped.set()
        self.force_flush()
        self._close()

    def _send(self, batch: list[ReadableSpan]) -> None:
        assert self._exporter is not None
        self._exporter.export(batch)

    def _close(self) -> None:
        if self._exporter is not None:
            self._exporter.shutdown()

    def _every_delay(self) -> None:
        while not self._stopped.wait(self.DELAY_S):
            self.force_flush()

    def _export(self, batch: list[ReadableSpan]) -> None:
        try:  # a span's end must never fail the request that ends it
            self._send(batch)
        except Exception:
            log.exception("span export failed")


class ShippingProcessor(InlineBatchProcessor):
    """Sends finished spans, as plain values (`shipped`), to a writer process that
    appends them to the file as `JsonLinesExporter` would (`python -m
    sluice.common.trace_files`): the inference server's, whose span export otherwise ran
    on the core that serves its requests. The batch holds the ended spans; they become
    their values when it is sent, in one loop (done per span as each ended, the same work
    ran with cold caches between two run() calls: bench/README.md, tracing), and a request's
    span carries the run() span the script left alone (`run_span`). The resource's shown
    attributes go to the writer once, when it starts.
    """

    def __init__(self, path: Path, service: str, resource: Resource) -> None:
        self.path = path
        shown = orjson.dumps(resource_attributes(resource)).decode()
        self.writer = WriterProcess(
            [sys.executable, "-m", "sluice.common.trace_files", str(path), service, shown]
        )
        self.writer.start()
        super().__init__(None)

    def _send(self, spans: list[ReadableSpan]) -> None:
        batch = [shipped(span) for span in spans]
        try:
            self.writer.send(batch)
        except ValueError:  # a value marshal cannot write: as JSON would show it, as text
            self.writer.send(orjson.loads(orjson.dumps(batch, default=str)))

    def _close(self) -> None:
        self.writer.close()


def write_shipped(path: Path, service: str, shown: Mapping[str, Any]) -> None:
    """The writer process of `ShippingProcessor`: batches from stdin to the file."""
    lines = JsonLinesFile(path)
    to_lines = SpanLines(service, shown)
    for batch in frames(sys.stdin.buffer):
        data = to_lines(batch)
        try:
            lines.append(data)
        except OSError as exc:
            log.warning("span export failed: %s", exc)


def read_spans(folder: Path) -> Iterator[dict[str, Any]]:
    """Every span recorded under `folder` (the state directory's `traces`), in file order.
    Deployments' inference servers write theirs in folders their code can also write:
    only plain files are read (`sluice.common.untrusted`), a line up to MAX_SPAN_LINE."""
    for path in sorted(p for p, _ in plain_files(folder, "") if ".jsonl" in p.name):
        with contextlib.suppress(OSError), open_plain(path) as lines:
            while line := lines.readline(MAX_SPAN_LINE):
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


if __name__ == "__main__":
    write_shipped(Path(sys.argv[1]), sys.argv[2], orjson.loads(sys.argv[3]))
