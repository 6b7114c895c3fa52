"""The CloudEvents 1.0 envelope of every event (structured mode: the whole event is the body).

`CloudEvent[P]` is the typed form a handler receives (FastStream validates the
body against it); `EventEnvelope` is the untyped form for code that reads any
event (audit tools, tests).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

CONTENT_TYPE = "application/cloudevents+json"

P = TypeVar("P")


def new_event_id() -> str:
    return uuid.uuid4().hex


class CloudEvent(BaseModel, Generic[P]):
    """A CloudEvents 1.0 event with Sluice's extensions `actor` and `correlationid`, and
    the distributed tracing extension's `traceparent`/`tracestate` when the change was traced."""

    model_config = ConfigDict(frozen=True)

    specversion: str = "1.0"
    id: str = Field(default_factory=new_event_id, description="also the Nats-Msg-Id header")
    source: str = Field(description="the service that emitted it, e.g. sluice/registry")
    type: str = Field(description="sluice.<entity>.<verb>")
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = Field(default=None, description="the resource: <endpoint>[/<deployment>]")
    datacontenttype: str = "application/json"
    actor: str = Field(description="who made the change (the CLI sends the user name)")
    correlationid: str = Field(description="the gRPC call's x-correlation-id, carried through")
    # CloudEvents' distributed tracing extension: the W3C trace context of the change.
    traceparent: str | None = Field(default=None, description="W3C traceparent (when traced)")
    tracestate: str | None = Field(default=None, description="W3C tracestate (when traced)")
    data: P


class EventEnvelope(CloudEvent[dict[str, Any]]):
    """Any event, its payload left as a dict."""

    data: dict[str, Any] = Field(default_factory=dict)


def parse_envelope(body: bytes | str) -> EventEnvelope:
    return EventEnvelope.model_validate_json(body)
