"""A batch job's trace: a `job` span under the invoke that created it, a child per mini-batch.

The invoke's W3C trace context is stored with the job (`Job.trace`), so a runner that
resumes the job after a restart continues the same trace. The job span is the current
span while the runner starts and finishes the job: the job's state-change events carry it
(CloudEvents' `traceparent`) and its Mongo calls are its children. It is not current while
the runner watches the job, whose poll every 0.25 s would otherwise add a span each time.

Each mini-batch is a child span built from its result, when the runner receives it: the
worker measured when it started and ended, and a failure is the span's error. Workers do
not load the tracing SDK themselves. With tracing off every span is the API's no-op.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from sluice.batch.jobs import Job, JobState
from sluice.batch.worker import MiniBatchResult
from sluice.common import tracing


class JobTrace:
    def __init__(self, job: Job, tracer: trace.Tracer | None = None) -> None:
        """`tracer`: the process's (tracing.py) unless given."""
        self._job = job
        self._tracer = tracer or trace.get_tracer("sluice.batch")
        self._span: Span = trace.INVALID_SPAN
        # Results published before this runner started were traced by the runner before it
        # (the results stream replays them all to a resuming runner).
        self._since_ns = time.time_ns()

    @contextmanager
    def job(self) -> Iterator[None]:
        """The job's span around the runner's whole run, current inside this block."""
        job = self._job
        parent = tracing.extract(job.trace) if job.trace else None
        attributes: dict[str, AttributeValue] = {
            "sluice.job": job.name,
            "sluice.endpoint": job.endpoint_name,
            "sluice.deployment": job.deployment_name,
            "sluice.job.resumed": job.state is not JobState.queued,
        }
        with self._tracer.start_as_current_span("job", parent, attributes=attributes) as span:
            self._span = span
            yield

    @contextmanager
    def watching(self) -> Iterator[None]:
        """No current span inside this block (the job's polls add none)."""
        token = otel_context.attach(otel_context.Context())
        try:
            yield
        finally:
            otel_context.detach(token)

    def ended(self, state: JobState, message: str) -> None:
        self._span.set_attribute("sluice.job.state", state.value)
        if state is JobState.failed:
            self._span.set_status(Status(StatusCode.ERROR, message))

    def mini_batch(self, result: MiniBatchResult) -> None:
        """A span for one mini-batch's outcome, a child of the job's."""
        if not self._span.is_recording() or result.finished_ns < self._since_ns:
            return
        started_ns = result.finished_ns - int(result.seconds * 1e9)
        span = self._tracer.start_span(
            "mini-batch",
            trace.set_span_in_context(self._span),
            start_time=started_ns,
            attributes={
                "sluice.batch.index": result.index,
                "sluice.batch.files": result.files,
                "sluice.batch.rows": result.rows,
                "sluice.batch.attempts": result.attempts,
                "sluice.batch.worker": result.worker,
            },
        )
        if not result.ok:
            span.add_event("exception", {"exception.message": result.error})
            span.set_status(Status(StatusCode.ERROR, result.error))
        span.end(end_time=result.finished_ns)
