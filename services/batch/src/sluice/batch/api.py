"""gRPC face of the batch service: protobuf <-> jobs, service errors -> status codes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any
from urllib.parse import urlencode

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from sluice.batch import scoring_uri
from sluice.batch.jobs import Job
from sluice.batch.service import (
    AlreadyExists,
    BatchService,
    FailedPrecondition,
    InvalidArgument,
    InvokeRequest,
    NotFound,
    Overrides,
)
from sluice.common.access import status_for_caller
from sluice.common.artifacts import ArtifactError, in_thread, plain_folder_chunks
from sluice.common.azure_ids import resource_id
from sluice.common.grpc_server import actor_of, metadata_value
from sluice.common.resources import ArtifactRef
from sluice.v1 import batch_pb2, batch_pb2_grpc, common_pb2, workspace_pb2

CODES: dict[type[Exception], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}
MAX_PAGE = 500
OUTPUT_NAME = "score"  # a batch job's one output, as Azure names it
Behaviour = Callable[..., Awaitable[Any]]


def errors(behaviour: Behaviour) -> Behaviour:
    @wraps(behaviour)
    async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behaviour(self, request, context)
        except (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition) as exc:
            await context.abort(CODES[type(exc)], str(exc))

    return call


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def to_proto(job: Job) -> batch_pb2.Job:
    p = job.progress
    msg = batch_pb2.Job(
        name=job.name,
        endpoint_name=job.endpoint_name,
        deployment_name=job.deployment_name,
        state=batch_pb2.JobState.Value(f"JOB_STATE_{job.state.name.upper()}"),
        progress=batch_pb2.JobProgress(
            mini_batches_total=p.mini_batches_total,
            mini_batches_done=p.mini_batches_done,
            mini_batches_failed=p.mini_batches_failed,
            files_total=p.files_total,
            files_succeeded=p.files_succeeded,
            files_failed=p.files_failed,
        ),
        input=job.input,
        output_path=job.output_path,
        errors=[
            batch_pb2.JobError(
                mini_batch=e.mini_batch, files=e.files, exception=e.exception, attempts=e.attempts
            )
            for e in job.errors
        ],
        status_message=status_for_caller(job.status_message),
        cost=batch_pb2.JobCost(
            instance_type=job.cost.instance_type,
            worker_seconds=job.cost.worker_seconds,
            price_per_hour=job.cost.price_per_hour,
            cost=job.cost.cost,
            instance_seconds=job.cost.instance_seconds,
        ),
        output_file_name=job.settings.output_file_name,
        workers=job.workers,
    )
    for field, value in (
        ("created_at", job.created_at),
        ("started_at", job.started_at),
        ("ended_at", job.ended_at),
    ):
        stamp = _timestamp(value)
        if stamp is not None:
            getattr(msg, field).CopyFrom(stamp)
    return msg


def to_resource(job: Job) -> batch_pb2.JobResource:
    """The job in Azure Resource Manager's shape, for the REST API: Azure's status names
    and a batch job's pipeline-job properties; Sluice's own view under `details`."""
    system = workspace_pb2.SystemData(
        created_by=job.created_by,
        created_by_type="User",
        last_modified_by=job.created_by,
        last_modified_by_type="User",
    )
    system.created_at.FromDatetime(job.created_at.astimezone(UTC))
    system.last_modified_at.FromDatetime((job.ended_at or job.created_at).astimezone(UTC))
    return batch_pb2.JobResource(
        id=resource_id("jobs", job.name),
        name=job.name,
        type="Microsoft.MachineLearningServices/workspaces/jobs",
        properties=batch_pb2.JobProperties(
            job_type="Pipeline",
            status=batch_pb2.JobStatus.Value.Value(job.state.value),
            display_name=job.name,
            experiment_name=job.endpoint_name,
            tags={"azureml.batchrun": "true"},
            details=to_proto(job),
        ),
        system_data=system,
    )


def _artifact(request: Any) -> ArtifactRef | None:
    if not request.HasField("input_artifact") or not request.input_artifact.digest:
        return None
    ref = request.input_artifact
    try:
        return ArtifactRef(digest=ref.digest, name=ref.name, is_directory=ref.is_directory)
    except ValueError as exc:  # pydantic: a malformed digest or name
        raise InvalidArgument(f"input_artifact: {exc}") from None


def _overrides(msg: Any) -> Overrides:
    def get(field: str) -> Any:
        return getattr(msg, field) if msg.HasField(field) else None

    return Overrides(
        mini_batch_size=get("mini_batch_size"),
        instance_count=get("instance_count"),
        error_threshold=get("error_threshold"),
        max_retries=get("max_retries"),
        timeout_s=get("timeout_s"),
        output_file_name=get("output_file_name"),
        max_concurrency_per_instance=get("max_concurrency_per_instance"),
    )


def _next_link(request: Any, token: str) -> str:
    """The next page of the same list: the request's filters and page size kept (in the
    query parameters' JSON names, as the transcoder reads them), its token replaced."""
    if not token:
        return ""
    query = {
        "endpointName": request.endpoint_name,
        "deploymentName": request.deployment_name,
        "page.pageSize": request.page.page_size or "",
    }
    kept = {k: v for k, v in query.items() if v}
    return "/jobs?" + urlencode({**kept, "page.pageToken": token})


class BatchApi(batch_pb2_grpc.BatchServicer):
    def __init__(self, service: BatchService, domain: str = "localhost"):
        self._svc = service
        self._domain = domain  # batch endpoints' hosts are `<endpoint>.<domain>`

    async def _invoke(self, request: Any, context: Any) -> Job:
        return await self._svc.invoke(
            InvokeRequest(
                endpoint_name=request.endpoint_name,
                deployment_name=request.deployment_name,
                input=request.input,
                input_type=request.input_type,
                output_path=request.output_path,
                job_name=request.job_name,
                overrides=_overrides(request.overrides),
                input_artifact=_artifact(request),
            ),
            actor_of(context),
        )

    @errors
    async def InvokeBatchEndpoint(self, request: Any, context: Any) -> Any:
        return to_proto(await self._invoke(request, context))

    @errors
    async def GetJob(self, request: Any, context: Any) -> Any:
        return to_proto(await self._svc.get(request.name))

    async def _page(self, request: Any) -> tuple[list[Job], str]:
        size = min(request.page.page_size or 100, MAX_PAGE)
        return await self._svc.store.page(
            endpoint=request.endpoint_name,
            deployment=request.deployment_name,
            size=size,
            after=request.page.page_token,
        )

    @errors
    async def ListJobs(self, request: Any, context: Any) -> Any:
        jobs, token = await self._page(request)
        return batch_pb2.ListJobsResponse(
            jobs=[to_proto(j) for j in jobs],
            page=common_pb2.PageResponse(next_page_token=token),
        )

    @errors
    async def CancelJob(self, request: Any, context: Any) -> Any:
        return to_proto(await self._svc.cancel(request.name))

    # ---- the REST API's shape of the same calls ---------------------------------------------

    @errors
    async def InvokeBatchEndpointResource(self, request: Any, context: Any) -> Any:
        return to_resource(await self._invoke(request, context))

    @errors
    async def GetJobResource(self, request: Any, context: Any) -> Any:
        return to_resource(await self._svc.get(request.name))

    @errors
    async def ListJobResources(self, request: Any, context: Any) -> Any:
        jobs, token = await self._page(request)
        return batch_pb2.JobResourceList(
            value=[to_resource(j) for j in jobs], next_link=_next_link(request, token)
        )

    @errors
    async def CancelJobResource(self, request: Any, context: Any) -> Any:
        return to_resource(await self._svc.cancel(request.name))

    @errors
    async def CreateEndpointJob(self, request: Any, context: Any) -> Any:
        """`POST <scoring_uri>`: Azure's body, the deployment in its header (scoring_uri.py)."""
        endpoint = request.endpoint_name or scoring_uri.endpoint_from_host(
            metadata_value(context, scoring_uri.HOST_HEADER), self._domain
        )
        wanted = scoring_uri.job_input(MessageToDict(request.body))
        job = await self._svc.invoke(
            InvokeRequest(
                endpoint_name=endpoint,
                deployment_name=metadata_value(context, scoring_uri.DEPLOYMENT_HEADER),
                input=wanted.uri,
                input_type=wanted.input_type,
                output_path=wanted.output_path,
                overrides=Overrides(output_file_name=wanted.output_file_name),
            ),
            actor_of(context),
        )
        return to_resource(job)

    @errors
    async def GetEndpointJob(self, request: Any, context: Any) -> Any:
        job = await self._svc.get(request.name)
        if job.endpoint_name.casefold() != request.endpoint_name.casefold():
            raise NotFound(
                f"job {request.name!r} is not a job of batch endpoint {request.endpoint_name!r}"
            )
        return to_resource(job)

    async def StreamJobLogs(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            async for source, line in self._svc.follow_logs(request.name, request.follow):
                yield batch_pb2.JobLogLine(source=source, line=line)
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

    async def DownloadJobOutput(self, request: Any, context: Any) -> AsyncIterator[Any]:
        """The output folder as a tar stream holding it as `score` (what `job download`
        writes to named-outputs/score/), read a chunk at a time in a worker thread."""
        try:
            folder = await self._svc.output(request.name)
        except (NotFound, FailedPrecondition) as exc:
            await context.abort(CODES[type(exc)], str(exc))
            raise AssertionError("unreachable: abort raises") from exc
        name, is_directory = OUTPUT_NAME, True
        try:
            async for data in in_thread(plain_folder_chunks(folder, OUTPUT_NAME)):
                yield batch_pb2.JobOutputChunk(name=name, is_directory=is_directory, data=data)
                name, is_directory = "", False  # only the first chunk names it
        except (OSError, ArtifactError) as exc:  # changed while it was being sent
            await context.abort(grpc.StatusCode.ABORTED, f"job {request.name}'s output: {exc}")
