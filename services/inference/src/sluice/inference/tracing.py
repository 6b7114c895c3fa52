"""Spans of the inference server: one per scoring request, one around run() and init().

A request's span continues the caller's W3C `traceparent` (the gateway forwards
the client's, or none, and then the trace starts here: Envoy 1.40's OpenTelemetry
tracer is still marked work-in-progress, not for production). It carries the
endpoint, deployment and instance, the request id the gateway returns
(`x-request-id`, `sluice.request_id`) and the status; run()'s span is its child,
and an exception raised by run() is recorded on it. A recorded request is logged
once (`request`, with `request_id` and `trace_id`), and its answer carries the
server span's `traceparent`.

Without `--trace-dir`/`--trace-otlp-endpoint` no `RequestTracer` exists and a
request pays one `is None` test.

A traced request is on the hot path, so this module keeps it to the SDK's own cost
(bench/tracing measures it): endpoint/deployment/instance are resource attributes
(stated once, not per span), span names are built once per route, run()'s span is
started with an explicit parent and made current with a bare attach/detach (no
context-manager layers), and success log lines are not even formatted unless debug
logging is on.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
from collections.abc import Callable
from typing import Any

import structlog
from opentelemetry import context, propagate, trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from sluice.common.tracing import configure_tracing
from sluice.inference.config import ServerConfig
from sluice.inference.http import Header, HttpRequest

log = structlog.get_logger("sluice.inference")
TRACER = "sluice.inference"
TRACEPARENT_LENGTH = 55  # 00-<32 hex>-<16 hex>-<2 hex>


def start_tracing(config: ServerConfig, scope: tuple[str, str]) -> RequestTracer | None:
    """Install the tracer provider when the server was asked to trace."""
    if not config.tracing:
        return None
    if config.trace_dir is not None:
        config.trace_dir.mkdir(parents=True, exist_ok=True)
    instance = os.environ.get("SLUICE_INSTANCE_ID", "")
    endpoint, deployment = scope
    attributes = {
        "sluice.endpoint": endpoint,
        "sluice.deployment": deployment,
        "sluice.instance": instance,
    }
    configure_tracing(
        f"inference-{instance}" if instance else "inference",
        sampling_ratio=config.trace_sampling_ratio,
        folder=config.trace_dir,
        otlp_endpoint=config.trace_otlp_endpoint,
        sampled_by_caller=True,  # RequestTracer.start decides before any span object exists
        resource=attributes,  # on every span, stated once
    )
    return RequestTracer(trace.get_tracer(TRACER), config.trace_sampling_ratio)


def traced_init(init: Callable[[], Any]) -> None:
    """init() inside a span (an exception is recorded on it and raised)."""
    # Always recorded, whatever the sampling ratio (once per process): a sampled remote
    # parent makes the parent-based sampler keep it; `sluice trace show` shows it as a root.
    phantom = SpanContext(
        secrets.randbits(128), secrets.randbits(64), is_remote=True, trace_flags=TraceFlags(1)
    )
    parent = trace.set_span_in_context(NonRecordingSpan(phantom))
    tracer = trace.get_tracer(TRACER)
    with tracer.start_as_current_span("init", parent):
        init()


class RequestTracer:
    def __init__(self, tracer: trace.Tracer, ratio: float) -> None:
        self.tracer = tracer
        self.ratio = ratio
        self._names: dict[tuple[str, str], str] = {}  # (method, route) -> span name
        self._log_successes = log.is_enabled_for(logging.DEBUG)

    def start(self, request: HttpRequest, request_id: str, route: str) -> Span | None:
        """The request's span, or None when the request is not traced.

        The sampling decision comes first and costs a header lookup and a random number:
        a caller's W3C `traceparent` decides (its sampled flag), else the ratio does. Only
        a traced request pays for span objects.
        """
        carrier: dict[str, str] = {}
        parent = request.header(b"traceparent")
        if parent is not None and len(parent) == TRACEPARENT_LENGTH:
            if not int(parent[-2:], 16) & 1:  # the caller did not sample it
                return None
            carrier["traceparent"] = parent.decode("latin-1")
            state = request.header(b"tracestate")
            if state is not None:
                carrier["tracestate"] = state.decode("latin-1")
        elif self.ratio < 1.0 and self.ratio <= random.random():  # noqa: S311 - sampling
            return None
        method = request.method
        name = self._names.get((method, route))
        if name is None:
            name = self._names.setdefault((method, route), f"{method} {route}")
        return self.tracer.start_span(
            name,
            context=propagate.extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
            attributes={
                "sluice.request_id": request_id,
                "http.request.method": method,
                "url.path": request.path,
            },
        )

    def run(self, call: Callable[[], Any], span: Span, is_async: bool) -> Callable[[], Any]:
        """`call` (one run()) inside a child span of the request's.

        The run span is the current span while run() runs, so spans the scoring script
        makes itself are its children.
        """
        if not span.is_recording():
            return call
        parent = trace.set_span_in_context(span)
        tracer = self.tracer

        if is_async:

            async def traced_async() -> Any:
                run = tracer.start_span("run", parent)
                token = context.attach(trace.set_span_in_context(run, parent))
                try:
                    return await call()
                except Exception as exc:
                    _record(run, exc)
                    raise
                finally:
                    context.detach(token)
                    run.end()

            return traced_async

        def traced() -> Any:
            run = tracer.start_span("run", parent)
            token = context.attach(trace.set_span_in_context(run, parent))
            try:
                return call()
            except Exception as exc:
                _record(run, exc)
                raise
            finally:
                context.detach(token)
                run.end()

        return traced

    def batch_run(self, call: Callable[[], Any], spans: list[Span], rows: int) -> Callable[[], Any]:
        """One run() over the rows of several requests (adaptive batching), in one span.

        A span has one parent: the first traced request's span is it, and the span links
        to every traced request of the batch (OpenTelemetry's way to say one operation
        served several traces), with the batch's size in requests and rows.
        """
        parent = trace.set_span_in_context(spans[0])
        links = [trace.Link(span.get_span_context()) for span in spans]
        attributes = {"sluice.batch.requests": len(spans), "sluice.batch.rows": rows}

        def traced() -> Any:
            with self.tracer.start_as_current_span(
                "run", parent, links=links, attributes=attributes
            ):
                return call()

        return traced

    def answered(self, span: Span, status: int, request_id: str, headers: list[Header]) -> None:
        """The request's status on its span; the span named in the answer and the log.

        A failed request (5xx) is logged with its request and trace ids; successful ones
        only at debug level (per-request logs stay off the hot path). The caller ends the
        span once the answer is sent (its end may write a batch of spans).
        """
        span.set_attribute("http.response.status_code", status)
        ctx = span.get_span_context()
        headers.append((b"traceparent", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01".encode()))
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            log.warning(
                "request", request_id=request_id, trace_id=f"{ctx.trace_id:032x}", status=status
            )
        elif self._log_successes:
            log.debug(
                "request", request_id=request_id, trace_id=f"{ctx.trace_id:032x}", status=status
            )


def _record(span: Span, exc: Exception) -> None:
    """What the SDK's `start_as_current_span` does with an exception leaving its block."""
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
