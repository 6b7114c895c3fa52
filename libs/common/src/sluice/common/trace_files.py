"""Spans as JSON lines under the state directory, and reading them back as trees.

The SDK is imported here, so only a process that traces (or `sluice trace show`)
loads it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

MAX_FILE_BYTES = 64 * 1024 * 1024  # then the file rolls over to <name>.1 (one kept)


def span_record(span: ReadableSpan, service: str) -> dict[str, Any]:
    """One span as a JSON object (ids in W3C hex, times in ns since the epoch)."""
    ctx = span.get_span_context()
    assert ctx is not None
    status = span.status
    return {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "name": span.name,
        "service": service,
        "kind": span.kind.name,
        "start": span.start_time,
        "end": span.end_time,
        "status": status.status_code.name,
        "status_message": status.description,
        # The process's own attributes (endpoint, deployment, instance) are on its resource.
        "attributes": {**_resource_attributes(span), **(span.attributes or {})},
        "events": [
            {"name": e.name, "time": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
        "links": [format(link.context.trace_id, "032x") for link in span.links],
    }


def _resource_attributes(span: ReadableSpan) -> dict[str, Any]:
    return {k: v for k, v in span.resource.attributes.items() if k.startswith("sluice.")}


class JsonLinesExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line, rolling over at 64 MiB."""

    def __init__(self, path: Path, service: str) -> None:
        self.path = path
        self._service = service
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = b"".join(
            orjson.dumps(span_record(s, self._service), default=str) + b"\n" for s in spans
        )
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
