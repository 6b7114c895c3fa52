"""A resumed job continues the trace of the invoke that created it: the job span of the
runner that resumes it is a child of the invoke's span stored with the job, says it
resumed, and the mini-batches its predecessor already reported get no second span."""

from __future__ import annotations

import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from sluice.batch.job_trace import JobTrace
from sluice.batch.jobs import Job, JobState
from sluice.batch.worker import MiniBatchResult
from sluice.common.resources import BatchSettings

INVOKE_TRACE, INVOKE_SPAN = "ab" * 16, "cd" * 8


def test_a_resumed_job_continues_the_invokes_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    job = Job(
        name="j",
        endpoint_name="e",
        deployment_name="d",
        deployment_version=1,
        state=JobState.running,  # as a restarted service finds it
        input="/in",
        files=tuple(f"/in/{i}" for i in range(4)),
        output_path="/out",
        settings=BatchSettings(mini_batch_size=2),
        trace={"traceparent": f"00-{INVOKE_TRACE}-{INVOKE_SPAN}-01"},
    )
    reported_before = time.time_ns()  # by the runner before the restart
    resumed = JobTrace(job, provider.get_tracer("test"))
    with resumed.job():
        resumed.mini_batch(MiniBatchResult(index=0, ok=True, files=2, finished_ns=reported_before))
        failed = MiniBatchResult(index=1, ok=False, files=2, error="boom", attempts=2, seconds=0.1)
        resumed.mini_batch(failed.model_copy(update={"finished_ns": time.time_ns()}))
        resumed.ended(JobState.failed, "1 mini-batch failed")

    mini_batch, job_span = exporter.get_finished_spans()
    assert job_span.name == "job" and job_span.context is not None
    assert job_span.context.trace_id == int(INVOKE_TRACE, 16)
    assert job_span.parent is not None and job_span.parent.span_id == int(INVOKE_SPAN, 16)
    assert job_span.attributes is not None
    assert job_span.attributes["sluice.job.resumed"] is True
    assert job_span.attributes["sluice.job.state"] == "Failed"
    assert job_span.status.status_code is StatusCode.ERROR
    assert mini_batch.name == "mini-batch" and mini_batch.attributes is not None
    assert mini_batch.attributes["sluice.batch.index"] == 1  # index 0: its predecessor's
    assert mini_batch.parent is not None and mini_batch.parent.span_id == job_span.context.span_id
    assert mini_batch.status.status_code is StatusCode.ERROR
    provider.shutdown()
