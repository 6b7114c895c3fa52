"""Spans as JSON lines: written in batches by the thread that ends a root span, stragglers by
the timer, read back with the process's resource attributes, and an exporter failure never
reaches the code that ends a span."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from sluice.common.trace_files import (
    InlineBatchProcessor,
    JsonLinesExporter,
    ShippingProcessor,
    SpanLines,
    SpanTuple,
    read_spans,
    tuple_record,
)
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


class Counting(SpanExporter):
    def __init__(self) -> None:
        self.names: list[str] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.names.extend(span.name for span in spans)
        return SpanExportResult.SUCCESS


def test_spans_ended_by_several_threads_are_each_exported_once() -> None:
    # The batch takes no lock: threads end spans (and export full batches) while the timer
    # takes what is held; every span is exported, none twice.
    class Busy(InlineBatchProcessor):
        DELAY_S = 0.0005  # the timer takes spans all the time

    counting = Counting()
    processor = Busy(counting)
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")

    def end_spans(thread: int) -> None:
        for i in range(3_000):
            tracer.start_span(f"{thread}-{i}").end()

    threads = [threading.Thread(target=end_spans, args=(t,)) for t in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as the interpreter lets them
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    provider.force_flush()
    assert len(counting.names) == 12_000
    assert set(counting.names) == {f"{t}-{i}" for t in range(4) for i in range(3_000)}
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


@pytest.mark.integration  # the writer is a child process
def test_a_writer_process_writes_the_lines_the_exporter_would(tmp_path: Path) -> None:
    """ShippingProcessor (the inference server's): the same spans give the same lines as
    JsonLinesExporter's (attributes, events, links, status, parent, the resource's shown
    attributes), the writer ends with its input after writing everything, and one that
    died is replaced."""
    shipped, direct = tmp_path / "shipped" / "s.jsonl", tmp_path / "direct" / "s.jsonl"
    shipped.parent.mkdir()
    direct.parent.mkdir()
    provider = TracerProvider(resource=RESOURCE)
    shipping = ShippingProcessor(shipped, "test", provider.resource)
    provider.add_span_processor(shipping)
    provider.add_span_processor(InlineBatchProcessor(JsonLinesExporter(direct, "test")))
    tracer = provider.get_tracer("test")
    linked = tracer.start_span("linked")
    linked.end()
    with tracer.start_as_current_span(
        "request", attributes={"sluice.request_id": "r-1", "n": 3, "sizes": (1, 2)}
    ):
        try:
            with tracer.start_as_current_span("run", links=[trace.Link(linked.get_span_context())]):
                raise ValueError("boom in run")
        except ValueError:
            pass
    provider.force_flush()
    first = shipping.writer.process
    assert first is not None
    wait_for(lambda: lines(shipped) == 3, "the writer to write the first spans", deadline=10)
    first.kill()  # the next batch starts another writer
    first.wait()
    tracer.start_span("after").end()
    provider.shutdown()  # the writer writes what it was sent, and ends
    second = shipping.writer.process
    assert second is not first and second is not None and second.poll() == 0
    assert shipped.read_bytes() == direct.read_bytes()
    spans = {s["name"]: s for s in read_spans(tmp_path / "shipped")}
    assert spans.keys() == {"linked", "request", "run", "after"}
    assert spans["run"]["links"] == [spans["linked"]["trace_id"]]
    assert spans["run"]["events"][0]["attributes"]["exception.type"] == "ValueError"
    assert spans["request"]["attributes"]["sizes"] == [1, 2]


@pytest.mark.parametrize(
    "fields",
    [
        # a request's span: a root, the server's attributes
        (2**127 + 5, 2**63 + 7, None, "POST /score", "SERVER", 10, 20, "UNSET", None,
         {"sluice.request_id": "r-1", "http.response.status_code": 200}, None, None),
        # run()'s span: a child, no attributes of its own, a failure
        (1, 2, 3, "run", "INTERNAL", 10, 20, "ERROR", 'KeyError: "x"\n', None, None, None),
        # what a script may set: any text, sequences, a value JSON has no type for
        (1, 2, None, 'é "quoted" \\ \t', "CLIENT", 0, 2**62, "OK", "",
         {"tags": ("a", "b"), "ratio": 0.5, "ok": True, "blob": b"\x00"}, None, None),
        # with events or links, or not ended: through the dict
        (1, 2, 3, "run", "INTERNAL", 10, 20, "ERROR", "boom", None,
         [("exception", 15, {"exception.message": "boom"})], None),
        (1, 2, None, "run", "INTERNAL", 10, 20, "UNSET", None, None, None, [9, 10]),
        (1, 2, None, "run", "INTERNAL", 10, None, "UNSET", None, None, None, None),
    ],
)  # fmt: skip
def test_a_span_s_line_is_what_orjson_writes_for_its_record(fields: SpanTuple) -> None:
    shown = {"sluice.endpoint": "e", "sluice.deployment": "blue"}
    expected = orjson.dumps(
        tuple_record(fields, "inference-1", shown), default=str, option=orjson.OPT_APPEND_NEWLINE
    )
    to_lines = SpanLines("inference-1", shown)
    assert to_lines.line(fields) == expected
    assert to_lines([fields, fields]) == expected * 2  # the texts it keeps change nothing
    assert SpanLines("inference-1", {}).line(fields) == orjson.dumps(
        tuple_record(fields, "inference-1", {}), default=str, option=orjson.OPT_APPEND_NEWLINE
    )


def test_a_request_s_span_with_its_run_span_gives_both_lines() -> None:
    """A request's span shipped with its plain run() span's id and times (`shipped`): the
    writer writes the request's line and run()'s, a child named "run" with nothing else."""
    request = (2**127 + 5, 2**63 + 7, None, "POST /score", "SERVER", 10, 40, "UNSET", None,
               {"sluice.request_id": "r-1"}, None, None)  # fmt: skip
    run = (2**127 + 5, 99, 2**63 + 7, "run", "INTERNAL", 15, 30, "UNSET", None, None, None, None)
    to_lines = SpanLines("inference-1", {"sluice.deployment": "blue"})
    assert to_lines.line((*request, 99, 15, 30)) == to_lines.line(request) + to_lines.line(run)
    assert to_lines([(*request, 99, 15, 30), request]) == to_lines([request, run, request])


def test_reading_spans_opens_only_plain_files(tmp_path: Path) -> None:
    """A deployment's code can write its span folder: a FIFO (which would block `sluice
    trace`), a link to /dev/zero or to a secret are skipped, its real lines read."""
    folder = tmp_path / "instances" / "ep" / "blue"
    folder.mkdir(parents=True)
    (folder / "spans.jsonl").write_bytes(b'{"trace_id": "ab", "name": "run"}\n')
    os.mkfifo(folder / "fifo.jsonl")
    (folder / "zero.jsonl").symlink_to("/dev/zero")
    secret = tmp_path / "secret.jsonl"
    secret.write_bytes(b'{"trace_id": "ab", "name": "secret"}\n')
    (folder / "secret.jsonl").symlink_to(secret)
    (folder / "linked").symlink_to(tmp_path)
    assert [s["name"] for s in read_spans(tmp_path / "instances")] == ["run"]
