"""OpenTelemetry tracing for every Sluice process: off by default, one call turns it on.

`configure_tracing(service, settings, folder)` installs the OpenTelemetry SDK's
tracer provider (parent-based ratio sampling) with two optional exporters:

- JSON lines under the state directory (`<state>/traces/platform/<service>-<pid>.jsonl`
  for the services, `<state>/traces/instances/<endpoint>/<deployment>/` for inference
  servers), read by `sluice trace show <trace-id>` with no extra server;
- OTLP over gRPC to any collector (`SLUICE_TRACING__OTLP_ENDPOINT`: Jaeger, Tempo, an
  OpenTelemetry Collector exporting to Application Insights).

With tracing off nothing of the SDK is imported and the API's no-op tracer is what
`trace.get_tracer()` returns. Trace context crosses processes as W3C `traceparent`:
gRPC metadata (the gRPC instrumentations) and CloudEvents' distributed tracing
extension (`envelope.traceparent`, see `inject`/`extract`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from sluice.common.settings import Settings

TRACES = "traces"
OTLP_GRPC_PORT = 4317
# What a platform service instruments when it traces: its gRPC server and clients, MongoDB.
SERVICE_INSTRUMENTATION = ("grpc_server", "grpc_client", "pymongo")
_configured = False


def platform_folder(state_dir: Path) -> Path:
    return state_dir / TRACES / "platform"


def instance_folder(state_dir: Path, endpoint: str, deployment: str) -> Path:
    return state_dir / TRACES / "instances" / endpoint / deployment


def otlp_port(endpoint: str) -> int:
    """The TCP port of an OTLP/gRPC endpoint (`http://host:4317`, `host:4317`; 4317 if unsaid)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    return parts.port or OTLP_GRPC_PORT


def configure_tracing(
    service: str,
    *,
    sampling_ratio: float,
    folder: Path | None = None,
    otlp_endpoint: str | None = None,
    instrument: Sequence[str] = (),
    sampled_by_caller: bool = False,
    resource: Mapping[str, str] | None = None,
    writer_process: bool = False,
) -> bool:
    """Install the SDK's tracer provider for this process (once); False if already done.

    `instrument` names the libraries to instrument: "grpc_server", "grpc_client",
    "grpc_client_sync", "pymongo". `sampled_by_caller`: the code decides itself which
    traces to start (the inference server, before it makes any span object), so every
    span it starts is recorded. `writer_process`: the JSON lines are written by a child
    process (`trace_files.ShippingProcessor`), off this process's core: the inference
    server's choice, whose requests pay for every span.
    """
    global _configured
    if _configured:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    # A caller that samples itself starts only spans it means to record: no parent to consult.
    sampler = ALWAYS_ON if sampled_by_caller else ParentBased(TraceIdRatioBased(sampling_ratio))
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"sluice-{service}", **(resource or {})}),
        sampler=sampler,
    )
    if folder is not None:
        from sluice.common.trace_files import (
            InlineBatchProcessor,
            JsonLinesExporter,
            ShippingProcessor,
        )

        path = folder / f"{service}-{os.getpid()}.jsonl"
        if writer_process:
            provider.add_span_processor(ShippingProcessor(path, service, provider.resource))
        else:
            provider.add_span_processor(InlineBatchProcessor(JsonLinesExporter(path, service)))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        otlp = OTLPSpanExporter(endpoint=otlp_endpoint, insecure=otlp_endpoint.startswith("http:"))
        provider.add_span_processor(BatchSpanProcessor(otlp))
    trace.set_tracer_provider(provider)
    _instrument(instrument)
    _configured = True
    return True


def configure_service_tracing(
    service: str, settings: Settings, *, instrument: Sequence[str]
) -> bool:
    """A platform service's tracing from its Settings (`settings.tracing`); False when off."""
    tracing = settings.tracing
    if not tracing.enabled:
        return False
    folder = platform_folder(settings.state_dir) if tracing.local_files else None
    if folder is not None:  # deployments' users may pass through traces/, not read this
        try:
            folder.mkdir(parents=True, exist_ok=True)
            folder.parent.chmod(0o711)
            folder.chmod(0o700)
        except OSError:  # e.g. the CLI of a user who cannot write the platform's folder
            folder = None
    return configure_tracing(
        service,
        sampling_ratio=tracing.sampling_ratio,
        folder=folder,
        otlp_endpoint=tracing.otlp_endpoint,
        instrument=instrument,
    )


def _instrument(names: Sequence[str]) -> None:
    if "grpc_server" in names:
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer

        GrpcAioInstrumentorServer().instrument()  # type: ignore[no-untyped-call]
    if "grpc_client" in names:
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient

        GrpcAioInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
    if "grpc_client_sync" in names:
        from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient

        GrpcInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
    if "pymongo" in names:
        from opentelemetry.instrumentation.pymongo import PymongoInstrumentor

        PymongoInstrumentor().instrument()


def shutdown() -> None:
    """Export what is buffered and stop the exporters (a writer process writes what it was
    sent and exits): for a process leaving with `os._exit`, which skips the SDK's own
    shutdown at interpreter exit (the inference server)."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


# ---- context across messages (CloudEvents' distributed tracing extension) -----------------


def inject() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, `tracestate`), maybe empty."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str]) -> otel_context.Context:
    """A context whose parent is the span named by `carrier`'s `traceparent`."""
    return propagate.extract(carrier)


def event_context(event: Any) -> otel_context.Context | None:
    """The trace context an event carries (CloudEvents' `traceparent`), or None."""
    traceparent = getattr(event, "traceparent", None)
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if getattr(event, "tracestate", None):
        carrier["tracestate"] = event.tracestate
    return extract(carrier)


@contextmanager
def consuming(event: Any, name: str) -> Iterator[otel_context.Context | None]:
    """Handle `event` inside a consumer span that continues its trace; yields that context.

    An event without `traceparent` (untraced, or from before tracing was on) gets no span.
    """
    parent = event_context(event)
    if parent is None:
        yield None
        return
    attributes = {
        "messaging.system": "nats",
        "cloudevents.event_id": event.id,
        "cloudevents.event_type": event.type,
        "cloudevents.event_subject": event.subject or "",
    }
    tracer = trace.get_tracer("sluice.events")
    kind = trace.SpanKind.CONSUMER
    with tracer.start_as_current_span(name, parent, kind=kind, attributes=attributes):
        yield otel_context.get_current()


def current_trace_id() -> str | None:
    """The hex trace id of the current span, if it is recorded."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None
