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

A traced request is on the hot path, so this module keeps it near the SDK's own cost
(bench/tracing measures it): the request's and run()'s spans are the SDK's spans,
started by `SpanStarter` with their parent's span context in hand (not through
`Tracer.start_span`'s general path: context lookups, a sampler call, a sampling result
per span); endpoint/deployment/instance are resource attributes (stated once, not per
span) and the request span's one attribute is the request id (method and route are its
name); span names are built once per route; run()'s span is made current with a bare
attach/detach (no context-manager layers); success log lines are not even formatted
unless debug logging is on.
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
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
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
UNSAMPLED = frozenset(b"%02x" % flags for flags in range(0, 256, 2))  # traceparent's last 2


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
        self._spans = SpanStarter(tracer)
        self._names: dict[tuple[str, str], str] = {}  # (method, route) -> span name
        self._log_successes = log.is_enabled_for(logging.DEBUG)

    def start(self, request: HttpRequest, request_id: str, route: str) -> Span | None:
        """The request's span, or None when the request is not traced.

        The sampling decision comes first and costs a header lookup and a random number:
        a caller's W3C `traceparent` decides (its sampled flag), else the ratio does. Only
        a traced request pays for span objects.
        """
        parent: SpanContext | None = None
        traceparent = request.header(b"traceparent")
        if traceparent is not None and len(traceparent) == TRACEPARENT_LENGTH:
            flags = traceparent[-2:]
            if flags in UNSAMPLED:  # the caller did not sample it
                return None
            parent = _remote_parent(traceparent, request.header(b"tracestate"))
        # Without a caller's (valid) traceparent the ratio decides: W3C says to ignore
        # one that does not parse.
        if parent is None and self.ratio < 1.0 and self.ratio <= random.random():  # noqa: S311
            return None
        method = request.method
        name = self._names.get((method, route))
        if name is None:
            name = self._names.setdefault((method, route), f"{method} {route}")
        # The method and route are in the name (OpenTelemetry's HTTP span names); each
        # attribute costs a check per request.
        attributes = {"sluice.request_id": request_id}
        return self._spans.start(name, parent, SpanKind.SERVER, attributes)

    def run(self, call: Callable[[], Any], span: Span, is_async: bool) -> Callable[[], Any]:
        """`call` (one run()) inside a child span of the request's: the dispatcher's
        `around`, so the span's own work is not timed as run()'s.

        The run span is the current span while run() runs, so spans the scoring script
        makes itself are its children.
        """
        parent = span.get_span_context()
        start = self._spans.start

        if is_async:

            async def traced_async() -> Any:
                run = start("run", parent, SpanKind.INTERNAL, None)
                token = context.attach(trace.set_span_in_context(run))
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
            run = start("run", parent, SpanKind.INTERNAL, None)
            token = context.attach(trace.set_span_in_context(run))
            try:
                return call()
            except Exception as exc:
                _record(run, exc)
                raise
            finally:
                context.detach(token)
                run.end()

        return traced

    def batch_run(self, spans: list[Span], rows: int, call: Callable[[], Any]) -> Callable[[], Any]:
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


def _remote_parent(traceparent: bytes, tracestate: bytes | None) -> SpanContext | None:
    """The caller's span, from its W3C headers (the SDK's propagator parses them), or None
    when they do not parse."""
    carrier = {"traceparent": traceparent.decode("latin-1")}
    if tracestate is not None:
        carrier["tracestate"] = tracestate.decode("latin-1")
    parent = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    return parent if parent.is_valid else None


class _SdkSpan(sdk_trace.Span):
    """The SDK's span class, as `Tracer.start_span` makes it (the SDK's `Span` refuses to be
    instantiated itself and its own subclass for that is private)."""


class SpanStarter:
    """Starts recorded spans of the SDK the way its `Tracer.start_span` does once its
    sampler said "record", without the general path: the inference server has already
    decided to trace (`RequestTracer.start`), knows the parent's span context (no context
    lookup, no sampler call, no sampling result object), and the tracer's resource,
    processors, limits and scope are read once, here. The spans are the SDK's own
    (`opentelemetry.sdk.trace.Span`): same attributes checks, same processors and
    exporters, ids from the tracer's id generator.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        assert isinstance(tracer, sdk_trace.Tracer), "tracing is configured with the SDK"
        self._resource = tracer.resource
        self._processor = tracer.span_processor
        self._ids = tracer.id_generator
        self._info = tracer.instrumentation_info
        self._scope = InstrumentationScope(
            self._info.name, self._info.version, self._info.schema_url
        )
        self._limits = sdk_trace.SpanLimits()  # the provider's default: the same env vars
        root = TraceFlags.SAMPLED
        if self._ids.is_trace_id_random():
            root |= TraceFlags.RANDOM_TRACE_ID
        self._root_flags = TraceFlags(root)
        self._child_flags = {  # by the parent's flags, as the SDK's sampler would decide
            flags: TraceFlags(TraceFlags.SAMPLED | (flags & TraceFlags.RANDOM_TRACE_ID))
            for flags in range(256)
        }

    def start(
        self,
        name: str,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, str] | None,
    ) -> Span:
        """A started span: a child of `parent`, or the root of a new trace."""
        if parent is None:
            trace_id, flags, state = self._ids.generate_trace_id(), self._root_flags, None
        else:
            trace_id, flags = parent.trace_id, self._child_flags[parent.trace_flags]
            state = parent.trace_state
        ids = SpanContext(trace_id, self._ids.generate_span_id(), False, flags, state)
        span = _SdkSpan(
            name,
            ids,
            parent,
            resource=self._resource,
            attributes=attributes,
            kind=kind,
            span_processor=self._processor,
            instrumentation_info=self._info,
            limits=self._limits,
            instrumentation_scope=self._scope,
        )
        span.start()
        return span
