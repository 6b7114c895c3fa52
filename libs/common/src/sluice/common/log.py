"""One structlog chain for every Sluice process.

Readable key=value lines on a terminal, one JSON object per line otherwise.
The correlation id travels in contextvars: bind it at every entry point
(gRPC call, event, HTTP request) with `bind_correlation_id`.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from typing import Any

import structlog

CORRELATION_ID = "correlation_id"


def configure_logging(
    *, level: str = "info", fmt: str = "auto", service: str | None = None
) -> None:
    """Configure structlog and the stdlib root logger once, at process start."""
    log_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if service:
        structlog.contextvars.bind_contextvars(service=service)
    renderer: structlog.types.Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(log_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries logging through the stdlib (grpc, faststream, pymongo) share the renderer.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[*_strip_meta(), renderer], foreign_pre_chain=shared
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(log_level, logging.INFO))
    # One line per outgoing HTTP request (probes) would drown everything else.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _strip_meta() -> list[structlog.types.Processor]:
    return [structlog.stdlib.ProcessorFormatter.remove_processors_meta]


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def bind_correlation_id(correlation_id: str | None = None) -> str:
    """Bind (or create) the correlation id for the current task and return it."""
    cid = correlation_id or new_correlation_id()
    structlog.contextvars.bind_contextvars(**{CORRELATION_ID: cid})
    return cid


def current_correlation_id() -> str | None:
    value: Any = structlog.contextvars.get_contextvars().get(CORRELATION_ID)
    return str(value) if value else None


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


def readable_log(text: str) -> str:
    """JSON log lines as a person reads them: `time level event key=value`, and an
    exception's traceback as its own lines instead of one JSON string full of `\\n`.

    For log excerpts shown to users (a failed init() in `create`'s error); lines that
    are not JSON objects pass through unchanged.
    """
    out: list[str] = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            out.append(line)
            continue
        exception = entry.pop("exception", None)
        head = [str(entry.pop(k)) for k in ("timestamp", "level", "event") if k in entry]
        rest = [f"{k}={v}" for k, v in entry.items()]
        out.append(" ".join(head + rest))
        if exception:
            out.extend(str(exception).splitlines())
    return "\n".join(out)
