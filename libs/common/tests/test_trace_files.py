"""Spans as JSON lines: written in batches by the thread that ends a root span, stragglers by
the timer, read back with the process's resource attributes, and an exporter failure never
reaches the code that ends a span."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from sluice.common.trace_files import InlineBatchProcessor, JsonLinesExporter, read_spans
from sluice.testing.wait import wait_for

RESOURCE = Resource.create({"service.name": "sluice-test", "sluice.deployment": "blue"})


def lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def test_a_full_batch_is_written_at_once_and_stragglers_by_the_timer(tmp_path: Path) -> None:
    path = tmp_path / "test-1.jsonl"
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(InlineBatchProcessor(JsonLinesExporter(path, "test")))
    tracer = provider.get_tracer("test")
    batch = InlineBatchProcessor.BATCH
    with tracer.start_as_current_span("request", attributes={"sluice.request_id": "r-1"}):
        try:
            with tracer.start_as_current_span("run"):
                raise ValueError("boom in run")
        except ValueError:
            pass
    for _ in range(batch - 2):
        tracer.start_span("filler").end()
    assert lines(path) == batch  # written by the span that filled the batch, no flush
    tracer.start_span("straggler").end()
    wait_for(lambda: lines(path) == batch + 1, "the timer's export", deadline=5)
    with tracer.start_as_current_span("parent"):
        for _ in range(batch):
            tracer.start_span("child").end()
        assert lines(path) == batch + 1  # nothing written in the middle of the parent's work
    assert lines(path) == 2 * batch + 2  # the parent's end wrote them all

    spans = {s["name"]: s for s in read_spans(tmp_path)}
    run, request = spans["run"], spans["request"]
    assert run["parent_id"] == request["span_id"] and run["trace_id"] == request["trace_id"]
    assert request["kind"] == "INTERNAL" and request["status"] == "UNSET"
    assert request["attributes"] == {"sluice.deployment": "blue", "sluice.request_id": "r-1"}
    assert run["status"] == "ERROR" and run["status_message"] == "ValueError: boom in run"
    assert run["events"][0]["attributes"]["exception.message"] == "boom in run"
    assert spans["straggler"]["attributes"] == {"sluice.deployment": "blue"}
    provider.shutdown()


class Failing(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise OSError("disk gone")


def test_a_failing_exporter_does_not_fail_the_span_that_fills_the_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(InlineBatchProcessor(Failing()))
    tracer: trace.Tracer = provider.get_tracer("test")
    for _ in range(InlineBatchProcessor.BATCH):
        tracer.start_span("request").end()
    assert "span export failed" in caplog.text
    provider.shutdown()
