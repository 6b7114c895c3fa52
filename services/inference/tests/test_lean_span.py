"""The inference server's `LeanSpan` does what the SDK's own span does with the same calls:
what a scoring script may do to the current span (attributes, checked and capped by the
same limits; events; links; a new name; an exception; the status), what is refused once
it ended, and what the provider's processors receive at its end."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from sluice.common.trace_files import ShippingProcessor, read_spans
from sluice.inference.tracing import LeanSpan, SpanStarter

PARENT = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TraceFlags(1))
LINKED = SpanContext(0x1234, 0x5678, False, TraceFlags(1))


def a_script_at_work(span: Span) -> None:
    span.set_attribute("model.rows", 3)
    span.set_attribute("refused", {"a dict": "is not an attribute value"})  # type: ignore[arg-type]
    span.set_attributes({"model.name": "ridge", "scores": [1.0, 2.0]})
    for i in range(130):  # past the default limit of 128 attributes: the oldest are dropped
        span.set_attribute(f"extra.{i}", i)
    span.add_event("loaded", {"size": 10})
    span.add_link(LINKED, {"why": "batch"})
    span.update_name("predict")
    span.record_exception(ValueError("boom"))
    span.set_status(Status(StatusCode.ERROR, "boom"))
    span.set_status(StatusCode.UNSET)  # ignored
    span.end()
    span.set_attribute("late", 1)  # ignored: the span ended
    span.set_status(StatusCode.OK)  # ignored too
    span.end()  # a warning, nothing exported twice


def exported(span: ReadableSpan) -> dict[str, Any]:
    return {
        "name": span.name,
        "parent": span.parent,
        "trace_id": span.context.trace_id if span.context else None,
        "kind": span.kind,
        "attributes": dict(span.attributes or {}),
        "dropped_attributes": span.dropped_attributes,
        "events": [(e.name, dict(e.attributes or {})) for e in span.events],
        "links": [(link.context, dict(link.attributes or {})) for link in span.links],
        "status": (span.status.status_code, span.status.description),
        "times": span.start_time is not None and span.end_time is not None,
        "scope": span.instrumentation_scope,
        "resource": span.resource,
    }


def test_a_lean_span_records_and_exports_what_the_sdks_span_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("sluice.inference")
    sdk_parent = trace.set_span_in_context(trace.NonRecordingSpan(PARENT))
    a_script_at_work(tracer.start_span("run", sdk_parent, SpanKind.INTERNAL))
    with caplog.at_level(logging.WARNING):
        lean = SpanStarter(tracer).start("run", PARENT, SpanKind.INTERNAL, None)
        assert isinstance(lean, LeanSpan) and lean.is_recording()
        a_script_at_work(lean)
    assert not lean.is_recording()
    assert "Calling end() on an ended span." in caplog.text
    sdk, ours = (exported(s) for s in spans.get_finished_spans())
    assert ours == sdk
    assert ours["attributes"]["extra.129"] == 129 and "refused" not in ours["attributes"]
    assert ours["dropped_attributes"] >= 5 and len(ours["attributes"]) == 128
    assert [name for name, _ in ours["events"]] == ["loaded", "exception"]
    assert ours["status"] == (StatusCode.ERROR, "boom")


def test_the_servers_own_attributes_skip_the_checks_but_are_exported() -> None:
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    span = SpanStarter(provider.get_tracer("t")).start(
        "POST /score", None, SpanKind.SERVER, {"sluice.request_id": "r1"}
    )
    span.put("http.response.status_code", 200)
    span.set_attribute("from.a.script", "x")  # then the SDK's bounded container takes over
    span.put("after", 1)
    span.end()
    (done,) = spans.get_finished_spans()
    assert dict(done.attributes or {}) == {
        "sluice.request_id": "r1",
        "http.response.status_code": 200,
        "from.a.script": "x",
        "after": 1,
    }
    assert done.parent is None and done.kind is SpanKind.SERVER


@pytest.mark.parametrize("is_async", [False, True])
def test_run_s_span_is_current_while_run_runs_and_only_then(is_async: bool) -> None:
    """LeanSpan.run_inside sets the current context on OpenTelemetry's ContextVar itself:
    inside run() the current span is run()'s (a script's own span is its child, what else
    the context held is kept), and afterwards, raised or not, the context is what it was."""
    import asyncio

    from opentelemetry import baggage, context

    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("sluice.inference")
    request = SpanStarter(tracer).start("POST /score", None, SpanKind.SERVER, {})
    seen: list[tuple[Span, object]] = []

    def script() -> None:
        seen.append((trace.get_current_span(), baggage.get_baggage("tenant")))
        with tracer.start_as_current_span("predict"):
            pass
        raise ValueError("boom")

    async def script_async() -> None:
        script()

    token = context.attach(baggage.set_baggage("tenant", "a"))
    try:
        before = context.get_current()
        with pytest.raises(ValueError, match="boom"):
            if is_async:
                asyncio.run(request.run_inside_async(script_async))
            else:
                request.run_inside(script)
        assert context.get_current() is before
    finally:
        context.detach(token)
    names = {s.name: s for s in spans.get_finished_spans()}
    run, predict = names["run"], names["predict"]
    assert seen == [(seen[0][0], "a")] and seen[0][0].get_span_context() == run.context
    assert predict.parent == run.context and run.parent == request.get_span_context()
    assert run.status.status_code is StatusCode.ERROR
    assert trace.get_current_span() is trace.INVALID_SPAN


@pytest.mark.integration  # the spans' writer is a child process
def test_a_run_span_the_script_left_alone_ships_with_its_request_s(tmp_path: Path) -> None:
    """Shipped to a writer process, a plain run() span rides on its request's span (one
    batch entry, `LeanSpan._run`) and is written as the span it is: run()'s id as the script
    saw it, a child of the request's span, within its times, closed to changes. One the
    script changed, or that raised, or that ran on another thread, ships by itself."""
    provider = TracerProvider()
    shipping = ShippingProcessor(tmp_path / "s.jsonl", "inference", provider.resource)
    provider.add_span_processor(shipping)
    starter = SpanStarter(provider.get_tracer("sluice.inference"))
    assert starter.pairs
    seen: dict[str, Span] = {}

    def request(rid: str, script: Callable[[], None]) -> LeanSpan:
        span = starter.start("POST /score", None, SpanKind.SERVER, {"sluice.request_id": rid})
        with contextlib.suppress(ValueError):
            span.run_inside(script)
        span.end()
        return span

    def plain() -> None:
        seen["plain"] = trace.get_current_span()

    def changed() -> None:
        trace.get_current_span().set_attribute("model.rows", 3)

    def raises() -> None:
        raise ValueError("boom")

    alone, touched, failed = request("r1", plain), request("r2", changed), request("r3", raises)
    assert alone._run is not None and touched._run is None and failed._run is None
    elsewhere = starter.start("POST /score", None, SpanKind.SERVER, {"sluice.request_id": "r4"})
    worker = threading.Thread(target=elsewhere.run_inside, args=(lambda: None,))  # a run() on a
    worker.start()  # worker thread may end after its request did: it ends as a span
    worker.join()
    elsewhere.end()
    assert elsewhere._run is None
    seen["plain"].set_attribute("late", 1)  # refused: it ended with run()
    assert not seen["plain"].is_recording()
    provider.shutdown()  # the writer writes what it was sent, and ends
    spans = list(read_spans(tmp_path))
    assert len(spans) == 8
    runs = {s["parent_id"]: s for s in spans if s["name"] == "run"}
    requests = {s["attributes"]["sluice.request_id"]: s for s in spans if s["name"] != "run"}
    run = runs[requests["r1"]["span_id"]]
    assert run["span_id"] == f"{seen['plain'].get_span_context().span_id:016x}"
    assert run["trace_id"] == requests["r1"]["trace_id"] and run["kind"] == "INTERNAL"
    assert run["attributes"] == {} and run["events"] == [] and run["status"] == "UNSET"
    assert requests["r1"]["start"] <= run["start"] <= run["end"] <= requests["r1"]["end"]
    assert runs[requests["r2"]["span_id"]]["attributes"] == {"model.rows": 3}
    assert requests["r4"]["span_id"] in runs
    third = runs[requests["r3"]["span_id"]]
    assert third["status"] == "ERROR" and third["events"][0]["name"] == "exception"
