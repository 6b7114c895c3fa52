"""Spans of a real inference server: a request continues the caller's traceparent, carries
the request id and the deployment, has run() as its child, and an exception in run() is
recorded on run()'s span; the script sets attributes on run()'s span and starts spans under
it; init() has its span; the request is logged with its trace id;
without tracing flags no span file appears."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from sluice.common.supervisor import Supervisor
from sluice.common.trace_files import read_spans, trace_spans, tree_lines
from sluice.testing.inference import start_server, wait_until, write_script

pytestmark = pytest.mark.integration

SCRIPT = """
from opentelemetry import trace

def init():
    pass

def run(raw_data):
    if "boom" in raw_data:
        raise ValueError("boom in run")
    trace.get_current_span().set_attribute("model.rows", 1)
    with trace.get_tracer("score").start_as_current_span("predict"):
        pass
    return {"ok": True}
"""
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def spans_of(folder: Path, trace_id: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = trace_spans(folder, trace_id)
        return len(found) >= count

    wait_until(enough, f"{count} spans of trace {trace_id}", timeout=10)
    return found


def test_request_and_run_spans_continue_the_callers_trace(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    code = write_script(tmp_path / "code", SCRIPT)
    traces = tmp_path / "traces"
    server = start_server(
        supervisor,
        "traced",
        code=code,
        extra=["--trace-dir", str(traces), "--trace-sampling-ratio", "0"],
        scope=("ep", "blue"),
    )
    ok = server.post('{"x": 1}', headers={"traceparent": PARENT, "x-request-id": "envoy-id-1"})
    assert ok.status == 200
    assert ok.headers["traceparent"].startswith(f"00-{TRACE_ID}-")
    request, run, predict = spans_of(traces, TRACE_ID, 3)
    assert request["name"] == "POST /score" and request["parent_id"] == "00f067aa0ba902b7"
    assert request["attributes"]["sluice.request_id"] == "envoy-id-1"
    assert request["attributes"]["sluice.deployment"] == "blue"
    assert request["attributes"]["sluice.endpoint"] == "ep"
    assert request["attributes"]["http.response.status_code"] == 200
    assert run["name"] == "run" and run["parent_id"] == request["span_id"]
    # The script's own attribute and span: run()'s span is the current one while it runs.
    assert run["attributes"]["model.rows"] == 1
    assert predict["name"] == "predict" and predict["parent_id"] == run["span_id"]

    failing = "00-" + "1" * 32 + "-00f067aa0ba902b7-01"
    bad = server.post('"boom"', headers={"traceparent": failing, "x-request-id": "envoy-id-2"})
    assert bad.status == 500
    request, run = spans_of(traces, "1" * 32, 2)
    assert request["status"] == "ERROR" and run["status"] == "ERROR"
    (exception,) = run["events"]
    assert exception["name"] == "exception"
    assert exception["attributes"]["exception.message"] == "boom in run"
    assert "! exception boom in run" in "\n".join(tree_lines([request, run]))

    # Sampling ratio 0: a request without a sampled parent records nothing ...
    assert "traceparent" not in server.post('{"x": 2}').headers
    unsampled = "00-" + "2" * 32 + "-00f067aa0ba902b7-00"
    assert "traceparent" not in server.post('{"x": 3}', headers={"traceparent": unsampled}).headers
    # A traceparent that is not W3C's is ignored (the ratio decides), not an error.
    malformed = "00-" + "a" * 32 + "-" + "b" * 16 + "-zz"
    ignored = server.post('{"x": 4}', headers={"traceparent": malformed})
    assert ignored.status == 200 and "traceparent" not in ignored.headers
    # ... but init() is always traced, and the log names each recorded request's trace.
    assert any(s["name"] == "init" for s in read_spans(traces))
    logged = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    requests = [e for e in logged if e.get("event") == "request"]
    # (successes are logged at debug level only)
    assert [(e["request_id"], e["trace_id"]) for e in requests] == [("envoy-id-2", "1" * 32)]


def test_no_tracing_flags_no_spans(supervisor: Supervisor, tmp_path: Path) -> None:
    code = write_script(tmp_path / "code", SCRIPT)
    server = start_server(supervisor, "untraced", code=code)
    reply = server.post('{"x": 1}', headers={"traceparent": PARENT})
    assert reply.status == 200 and "traceparent" not in reply.headers
    assert '"request"' not in server.log()


class Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP/gRPC trace collector (what Jaeger, Tempo or an OpenTelemetry Collector
    answer): keeps the spans it is sent, with their service's name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []  # (service.name, span name)

    def Export(  # noqa: N802 - the proto's method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                self.spans += [(attributes.get("service.name", ""), s.name) for s in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_reach_an_otlp_collector(supervisor: Supervisor, tmp_path: Path) -> None:
    """`--trace-otlp-endpoint`: the spans go to a collector over OTLP/gRPC (the exporter's
    generated protos must be opentelemetry-proto's: xds-protos ships older copies of the
    same files, and an install where those won failed at import)."""
    collector = Collector()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        code = write_script(tmp_path / "code", SCRIPT)
        endpoint = f"http://127.0.0.1:{port}"
        traced = start_server(
            supervisor,
            "otlp",
            code=code,
            extra=["--trace-otlp-endpoint", endpoint, "--trace-sampling-ratio", "1"],
            scope=("ep", "blue"),
        )
        assert traced.post('{"x": 1}', headers={"traceparent": PARENT}).status == 200
        # The SDK's batch processor sends every 5 s.
        wait_until(
            lambda: {"init", "run"} <= {name for _, name in collector.spans},
            "init's and run()'s spans at the collector",
            timeout=30,
        )
        assert {service for service, _ in collector.spans} == {"sluice-inference"}
    finally:
        server.stop(grace=None)
