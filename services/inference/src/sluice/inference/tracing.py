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

A traced request is on the hot path, so this module keeps it cheap (bench/tracing
measures it): the request's and run()'s spans are `LeanSpan`s, OpenTelemetry API spans
that are the SDK's `ReadableSpan`s for its processors and exporters but make the SDK's
locks and bounded containers only when a script adds something; `SpanStarter` starts them
with their parent's span context in hand (not through `Tracer.start_span`'s general path:
context lookups, a sampler call, a sampling result per span); endpoint/deployment/instance
are resource attributes (stated once, not per span) and the request span's one attribute
is the request id (method and route are its name); span names are built once per route;
run()'s span is made current on OpenTelemetry's ContextVar itself (no API layers), by
a method of the request's span (the dispatcher's `around`: no closure per request);
ended spans join the batch as they are (no lock; made into values when the batch is
sent), and a run() span the script left alone is not a batch entry at all but three
values on its request's span (`LeanSpan._run`); success log lines are not even formatted
unless debug logging is on.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import Token
from random import getrandbits
from threading import get_ident
from time import time_ns
from typing import Any

import structlog
from opentelemetry import context, propagate, trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util import BoundedList
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
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.util.types import Attributes, AttributeValue

from sluice.common.trace_files import InlineBatchProcessor, ShippingProcessor
from sluice.common.tracing import configure_tracing
from sluice.inference.config import ServerConfig
from sluice.inference.http import Header, HttpRequest

log = structlog.get_logger("sluice.inference")
logger = logging.getLogger(__name__)  # the SDK's warnings about ended spans, as it logs them
TRACER = "sluice.inference"
TRACEPARENT_LENGTH = 55  # 00-<32 hex>-<16 hex>-<2 hex>
UNSAMPLED = frozenset(b"%02x" % flags for flags in range(0, 256, 2))  # traceparent's last 2

# The current OpenTelemetry context: with the API's default runtime context (a ContextVar),
# that ContextVar's own get/set/reset, without the API's layers of calls around them
# (`context.attach` -> the runtime's `attach` -> `ContextVar.set`); with another runtime
# (the OTEL_PYTHON_CONTEXT setting), the API's functions.
_current: Callable[[], Context]
_attach: Callable[[Context], Token[Context]]
_detach: Callable[[Token[Context]], None]
_runtime = context._RUNTIME_CONTEXT
if type(_runtime) is ContextVarsRuntimeContext:
    _current = _runtime._current_context.get
    _attach = _runtime._current_context.set
    _detach = _runtime._current_context.reset
else:
    _current, _attach, _detach = context.get_current, context.attach, context.detach


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
        writer_process=True,  # JSON lines written off the core that serves requests
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

    def start(self, request: HttpRequest, request_id: str, route: str) -> LeanSpan | None:
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
        attributes: dict[str, AttributeValue] = {"sluice.request_id": request_id}
        return self._spans.start(name, parent, SpanKind.SERVER, attributes)

    def batch_run(self, spans: list[Span], rows: int, call: Callable[[], Any]) -> Any:
        """One run() over the rows of several requests (adaptive batching), in one span:
        the dispatcher's `around` for the batch.

        A span has one parent: the first traced request's span is it, and the span links
        to every traced request of the batch (OpenTelemetry's way to say one operation
        served several traces), with the batch's size in requests and rows.
        """
        parent = trace.set_span_in_context(spans[0])
        links = [trace.Link(span.get_span_context()) for span in spans]
        attributes = {"sluice.batch.requests": len(spans), "sluice.batch.rows": rows}
        with self.tracer.start_as_current_span("run", parent, links=links, attributes=attributes):
            return call()

    def answered(self, span: LeanSpan, status: int, request_id: str, headers: list[Header]) -> None:
        """The request's status on its span; the span named in the answer and the log.

        A failed request (5xx) is logged with its request and trace ids; successful ones
        only at debug level (per-request logs stay off the hot path). The caller ends the
        span once the answer is sent (its end may write a batch of spans).
        """
        span.put("http.response.status_code", status)
        ctx = span._context  # a SpanContext is a tuple: trace id, span id, ...
        headers.append((b"traceparent", b"00-%032x-%016x-01" % (ctx[0], ctx[1])))
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


UNSET = Status(StatusCode.UNSET)
_new = object.__new__


class LeanSpan(trace.Span, ReadableSpan):
    """A recorded span of a request or its run(): the OpenTelemetry API's `Span` while it
    runs (a scoring script can set attributes and the status of the current span, add
    events, record exceptions, and the spans it starts are its children) and the SDK's
    `ReadableSpan` that the provider's processors and exporters take at its end.

    The SDK's own `Span` makes, for every span, a lock, a `BoundedAttributes` (a lock and
    an OrderedDict), two `BoundedList`s (a deque and a lock each), calls the processors'
    `on_start`, and at its end copies itself into a new `ReadableSpan`: most of what two
    spans cost a request (bench/README.md, tracing). This span holds plain fields; the
    SDK's bounded containers (with the provider's limits: the same checks and caps) are
    made only when something is added to it, and at its end it hands itself to the
    processors' `on_end` (to the batch of `InlineBatchProcessor`, ours, directly), refusing
    changes from then on as the SDK's span does. What all spans share (resource, scope,
    no events, links or status yet) is on their class. Not called: the processors'
    `on_start` and the SDK's private `_on_ending` hook (the processors configured here,
    sluice.common.tracing's, do nothing there).
    """

    _context: SpanContext  # never None here (the SDK's ReadableSpan allows it)
    _events: Sequence[Event] = ()
    _links: Sequence[trace.Link] = ()
    _status = UNSET
    _end_time: int | None = None
    _changed = False  # by a change from outside (a script's): `_changing`
    # On a request's span: its run() span's id, start and end, when that span ships with it
    # (`_end_run`).
    _run: tuple[int, int | None, int] | None = None
    # Set by each `SpanStarter` on the class it makes for its spans:
    _starter: SpanStarter
    _resource: Any
    _instrumentation_info: Any
    _instrumentation_scope: InstrumentationScope

    # Set by `SpanStarter.start`: ReadableSpan's fields that differ per span (its __init__
    # would make a Resource per span).
    _name: str
    _parent: SpanContext | None
    _kind: SpanKind
    _attributes: dict[str, AttributeValue] | BoundedAttributes | None
    _start_time: int | None

    def run_inside(self, call: Callable[[], Any]) -> Any:
        """`call` (one run()) inside a child span of this one, named "run": the
        dispatcher's `around`, so the span's own work is not timed as run()'s.

        The run span is the current span while run() runs, so spans the scoring script
        makes itself are its children: set as the API's `set_span_in_context` and `attach`
        would, on the ContextVar they set (`_attach`). An exception run() raises is
        recorded on it.
        """
        run = self._starter.start("run", self._context, SpanKind.INTERNAL, None)
        token = _attach(Context({**_current(), _SPAN_KEY: run}))
        try:
            return call()
        except Exception as exc:
            _record(run, exc)
            raise
        finally:
            _detach(token)
            self._end_run(run)

    async def run_inside_async(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """`run_inside` for an `async def run()`."""
        run = self._starter.start("run", self._context, SpanKind.INTERNAL, None)
        token = _attach(Context({**_current(), _SPAN_KEY: run}))
        try:
            return await call()
        except Exception as exc:
            _record(run, exc)
            raise
        finally:
            _detach(token)
            self._end_run(run)

    def _end_run(self, run: LeanSpan) -> None:
        """End run()'s span. When spans ship to a writer process (`SpanStarter.pairs`), one
        that nothing changed (no attribute, event, link, name or status from the script, no
        exception) is not a span in the batch: its id and times ride on this, its request's
        span (`_run`), and the writer writes its line (trace_files `run_span`). A traced
        request then ends one span object where it ended two (bench/README.md, tracing).
        Only on the thread that ends the request's span (the event loop's): a run() on a
        worker thread may end after its request did (it timed out), and ends as a span."""
        starter = self._starter
        if run._changed or not starter.pairs or get_ident() != starter.thread:
            run.end()
            return
        end = run._end_time = time_ns()  # ended: a late change is refused, as after end()
        self._run = (run._context[1], run._start_time, end)

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def put(self, key: str, value: AttributeValue) -> None:
        """An attribute the server sets itself (a str or int it made): without the checks
        a script's values get, and without making the bounded container for it."""
        if self._attributes is None:
            self._attributes = {key: value}
        else:
            self._attributes[key] = value

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._changing("Setting attribute on ended span."):
            return
        self._bounded()[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self._changing("Setting attribute on ended span."):
            return
        bounded = self._bounded()
        for key, value in attributes.items():
            bounded[key] = value

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._changing("Calling add_event on an ended span."):
            return
        limits = self._starter.limits
        if not isinstance(self._events, BoundedList):
            self._events = BoundedList(limits.max_events)
        bounded = BoundedAttributes(
            limits.max_event_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
            immutable=True,
        )
        self._events.append(Event(name, bounded, timestamp))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self._changing("Calling add_link on an ended span.") or not context.is_valid:
            return
        limits = self._starter.limits
        if not isinstance(self._links, BoundedList):
            self._links = BoundedList(limits.max_links)
        bounded = BoundedAttributes(
            limits.max_link_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
            immutable=True,
        )
        self._links.append(trace.Link(context, bounded))

    def update_name(self, name: str) -> None:
        if not self._changing("Calling update_name on an ended span."):
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK's span: OK is final, UNSET is ignored."""
        if self._changing("Calling set_status on an ended span."):
            return
        if self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """The SDK's `exception` event (OpenTelemetry's semantic conventions)."""
        kind = type(exception)
        module = kind.__module__
        event: dict[str, AttributeValue] = {
            "exception.type": f"{module}.{kind.__qualname__}"
            if module and module != "builtins"
            else kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:  # (the check inline: twice per traced request)
            self._changing("Calling end() on an ended span.")
            return
        self._end_time = end_time if end_time is not None else time_ns()
        if type(self._attributes) is BoundedAttributes:  # (not an ABC check per span)
            self._attributes._immutable = True
        hold = self._starter.hold
        if hold is None:
            self._starter.processor.on_end(self)
        else:  # (a LeanSpan is sampled: on_end's test is not needed)
            parent = self._parent
            hold(self, parent is not None and not parent[2])  # (is_remote)

    def _bounded(self) -> BoundedAttributes:
        """The attributes in the SDK's container, made on the first value from outside."""
        attributes = self._attributes
        if not isinstance(attributes, BoundedAttributes):
            limits = self._starter.limits
            attributes = self._attributes = BoundedAttributes(
                limits.max_span_attributes,
                attributes,
                immutable=False,
                max_value_len=limits.max_span_attribute_length,
            )
        return attributes

    def _changing(self, warning: str) -> bool:
        """Whether a change must be refused: the span ended (the SDK's warning is logged).
        If not, the span is marked as changed (`_changed`)."""
        if self._end_time is None:
            self._changed = True
            return False
        logger.warning(warning)
        return True


class SpanStarter:
    """Starts the inference server's spans (`LeanSpan`) the way the SDK's
    `Tracer.start_span` does once its sampler said "record", without the general path: the
    server has already decided to trace (`RequestTracer.start`), knows the parent's span
    context (no context lookup, no sampler call, no sampling result object), and the
    tracer's resource, processors, limits and scope are read once, here: same processors
    and exporters, ids from the tracer's id generator, the provider's span limits.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        assert isinstance(tracer, sdk_trace.Tracer), "tracing is configured with the SDK"
        self.resource = tracer.resource
        self.processor = tracer.span_processor
        # The provider's processors are the SDK's multi-processor, a loop over a tuple: with
        # one processor (the JSON lines' or OTLP's), a span's end calls it directly.
        inner = getattr(self.processor, "_span_processors", None)
        if isinstance(inner, tuple) and len(inner) == 1:
            self.processor = inner[0]
        # A batch processor of ours: a span's end adds the span to its batch directly.
        self.hold: Callable[[LeanSpan, bool], None] | None = None
        if isinstance(self.processor, InlineBatchProcessor):
            self.hold = self.processor.add
        # Spans shipped to a writer process: a request's span carries its plain run() span.
        self.pairs = isinstance(self.processor, ShippingProcessor)
        self.thread = get_ident()  # the server's event loop's, which ends requests' spans
        self._ids = tracer.id_generator
        self._random = type(self._ids) is RandomIdGenerator
        self.info = tracer.instrumentation_info
        self.scope = InstrumentationScope(self.info.name, self.info.version, self.info.schema_url)
        self.limits = sdk_trace.SpanLimits()  # the provider's default: the same env vars
        root = TraceFlags.SAMPLED
        if self._ids.is_trace_id_random():
            root |= TraceFlags.RANDOM_TRACE_ID
        self._root_flags = TraceFlags(root)
        self._child_flags = {  # by the parent's flags, as the SDK's sampler would decide
            flags: TraceFlags(TraceFlags.SAMPLED | (flags & TraceFlags.RANDOM_TRACE_ID))
            for flags in range(256)
        }
        # This starter's spans: a class whose attributes are what all of them share.
        self.span_class: type[LeanSpan] = type(
            "LeanSpan",
            (LeanSpan,),
            {
                "_starter": self,
                "_resource": self.resource,
                "_instrumentation_info": self.info,
                "_instrumentation_scope": self.scope,
            },
        )

    def start(
        self,
        name: str,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, AttributeValue] | None,
    ) -> LeanSpan:
        """A started span: a child of `parent`, or the root of a new trace."""
        if parent is None:
            trace_id = (self._random and getrandbits(128)) or self._ids.generate_trace_id()
            flags, state = self._root_flags, DEFAULT_TRACE_STATE
        else:  # (a SpanContext's fields by index: its properties are Python calls)
            trace_id, flags, state = parent[0], self._child_flags[parent[3]], parent[4]
        # The SDK's RandomIdGenerator draws from `random` and redraws a 0: the same, less
        # a Python call per id.
        span_id = (self._random and getrandbits(64)) or self._ids.generate_span_id()
        # SpanContext(trace_id, span_id, False, flags, state) without its checks: the ids
        # are the id generator's (never 0) or a valid parent's, the state a TraceState.
        ids = tuple.__new__(SpanContext, (trace_id, span_id, False, flags, state, True))
        # Its fields set here rather than by an __init__: a Python call less per span.
        span = _new(self.span_class)
        span._name = name
        span._context = ids
        span._parent = parent
        span._kind = kind
        span._attributes = attributes
        span._start_time = time_ns()
        return span
