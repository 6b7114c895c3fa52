"""Python client for the batch service: invoke batch endpoints, follow and manage jobs.

`BatchClient.connect()` finds the local platform's batch service (or
`SLUICE_BATCH_ADDRESS`) and its admin token like the registry client does.
Jobs come back as the `Job` protobuf message; `job_view` turns one into the
plain data the CLI prints, with Azure's spelling of states.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from sluice.common.azure_ids import resource_id
from sluice.common.platform import LocalPlatform
from sluice.common.settings import Settings
from sluice.sdk.channel import reads_channel, unreachable
from sluice.sdk.client import PAGE_SIZE, RegistryClient, SluiceError, admin_token
from sluice.sdk.download import Download, started
from sluice.v1 import batch_pb2, batch_pb2_grpc, common_pb2

T = TypeVar("T")
TERMINAL = {"Completed", "Failed", "Canceled"}
INT_OVERRIDES = {
    "mini_batch_size": "mini_batch_size",
    "instance_count": "instance_count",
    "resources.instance_count": "instance_count",
    "error_threshold": "error_threshold",
    "max_retries": "max_retries",
    "retry_settings.max_retries": "max_retries",
    "timeout": "timeout_s",
    "retry_settings.timeout": "timeout_s",
    "max_concurrency_per_instance": "max_concurrency_per_instance",
}


@dataclass(frozen=True)
class Invocation:
    """What az's `batch-endpoint invoke --file/--inputs/--outputs` say, as Sluice's options."""

    input: str
    input_type: str = ""
    output_path: str = ""
    output_file_name: str = ""


INPUT_TYPES = ("uri_folder", "uri_file")


def invocation(inputs: Any, outputs: Any, where: str, base: Path | None = None) -> Invocation:
    """Azure's job inputs and outputs (`{name: {type, path}}`, from an invocation YAML or
    `--inputs`/`--outputs` JSON) for a model deployment: one input (a folder or a file), at
    most one output (a folder, or a `uri_file` whose name is the output file's). Local
    paths are read relative to `base` (the YAML's folder); `where` names the source in
    errors."""
    if not isinstance(inputs, dict) or len(inputs) != 1:
        raise SluiceError(
            "INVALID_ARGUMENT",
            f"{where}: inputs must name one input ({{name: {{type, path}}}}), as a model "
            "deployment takes one",
        )
    ((name, given),) = inputs.items()
    path, kind = _job_io(given, f"{where}: input {name!r}")
    if kind not in ("", *INPUT_TYPES):
        raise SluiceError(
            "INVALID_ARGUMENT", f"{where}: input {name!r} type {kind!r}: use uri_folder or uri_file"
        )
    if base is not None and "://" not in path and not path.startswith("azureml:"):
        path = str((base / path).expanduser())
    result = Invocation(path, kind)
    if outputs in (None, {}):
        return result
    if not isinstance(outputs, dict) or len(outputs) != 1:
        raise SluiceError(
            "INVALID_ARGUMENT", f"{where}: outputs must name one output ({{name: {{type, path}}}})"
        )
    ((out_name, out),) = outputs.items()
    out_path, out_kind = _job_io(out, f"{where}: output {out_name!r}")
    if out_kind not in ("", *INPUT_TYPES):
        raise SluiceError(
            "INVALID_ARGUMENT",
            f"{where}: output {out_name!r} type {out_kind!r}: use uri_folder or uri_file",
        )
    if out_kind == "uri_file":  # the folder, and the output file's name
        folder, _, file_name = out_path.rstrip("/").rpartition("/")
        if not folder or not file_name:
            raise SluiceError(
                "INVALID_ARGUMENT", f"{where}: output {out_name!r}: {out_path!r} names no file"
            )
        return Invocation(path, kind, folder, file_name)
    return Invocation(path, kind, out_path)


def _job_io(value: Any, what: str) -> tuple[str, str]:
    """(path, type) of one input or output: `{type, path}` or a bare path."""
    if isinstance(value, str) and value:
        return value, ""
    if not isinstance(value, dict) or not isinstance(value.get("path"), str) or not value["path"]:
        raise SluiceError("INVALID_ARGUMENT", f"{what} needs a path ({{type, path}})")
    kind = value.get("type", "")
    return value["path"], kind if isinstance(kind, str) else str(kind)


def state_name(job: Any) -> str:
    """JOB_STATE_COMPLETED -> "Completed" (Azure's spelling)."""
    return str(batch_pb2.JobState.Name(job.state)).removeprefix("JOB_STATE_").title()


def job_view(job: Any) -> dict[str, Any]:
    p = job.progress
    return {
        "id": resource_id("jobs", job.name),
        "name": job.name,
        "type": "pipeline",  # as az shows a batch job
        "status": state_name(job),
        "endpoint_name": job.endpoint_name,
        "deployment_name": job.deployment_name,
        "input": job.input,
        "output_path": job.output_path,
        "output_file_name": job.output_file_name,
        "workers": job.workers,
        "progress": {
            "mini_batches_total": p.mini_batches_total,
            "mini_batches_done": p.mini_batches_done,
            "mini_batches_failed": p.mini_batches_failed,
            "files_total": p.files_total,
            "files_succeeded": p.files_succeeded,
            "files_failed": p.files_failed,
        },
        "errors": [
            {
                "mini_batch": e.mini_batch,
                "files": list(e.files),
                "exception": e.exception,
                "attempts": e.attempts,
            }
            for e in job.errors
        ],
        "status_message": job.status_message,
        "cost": {
            "instance_type": job.cost.instance_type,
            "worker_seconds": round(job.cost.worker_seconds, 3),
            "instance_seconds": round(job.cost.instance_seconds, 3),
            "price_per_hour": job.cost.price_per_hour,
            "cost": job.cost.cost,
        },
        "created_at": job.created_at.ToJsonString() if job.HasField("created_at") else None,
        "started_at": job.started_at.ToJsonString() if job.HasField("started_at") else None,
        "ended_at": job.ended_at.ToJsonString() if job.HasField("ended_at") else None,
    }


def parse_overrides(values: list[str]) -> batch_pb2.JobOverrides:
    """`--set mini_batch_size=2 output_file_name=x.csv` -> JobOverrides (clear errors)."""
    overrides = batch_pb2.JobOverrides()
    for item in " ".join(values).split():
        key, sep, value = item.partition("=")
        if not sep:
            raise SluiceError("INVALID_ARGUMENT", f"--set {item!r}: use key=value")
        key = key.removeprefix("settings.")
        if key == "output_file_name":
            overrides.output_file_name = value
        elif key in INT_OVERRIDES:
            try:
                setattr(overrides, INT_OVERRIDES[key], int(value))
            except ValueError:
                raise SluiceError(
                    "INVALID_ARGUMENT", f"--set {key}={value!r}: a whole number is needed"
                ) from None
        else:
            known = ", ".join(sorted({*INT_OVERRIDES, "output_file_name"}))
            raise SluiceError("INVALID_ARGUMENT", f"--set {key}: not a job setting ({known})")
    return overrides


def upload_input(registry: RegistryClient, path: Path) -> common_pb2.ArtifactRef:
    """A local input file or folder, uploaded for a job (`BatchClient.invoke(input_artifact=)`).

    The batch service reads no caller's path (a caller could name the platform's own
    secrets): local data travels like model and code, content-addressed.
    """
    ref = registry.upload(path)
    return common_pb2.ArtifactRef(digest=ref.digest, name=ref.name, is_directory=ref.is_directory)


class BatchClient:
    def __init__(self, address: str, token: str, *, actor: str | None = None):
        self.address = address
        self._channel = reads_channel(address, [batch_pb2.DESCRIPTOR.services_by_name["Batch"]])
        self._stub = batch_pb2_grpc.BatchStub(self._channel)
        self._metadata = (
            ("authorization", f"Bearer {token}"),
            ("actor", actor or getpass.getuser()),
        )

    @classmethod
    def connect(cls, settings: Settings | None = None) -> BatchClient:
        settings = settings or Settings()
        platform = LocalPlatform(settings)
        address = settings.batch_address
        if not address:
            state = platform.load_state()
            found = [p for p in (state.processes if state else []) if p.name == "batch"]
            if not found:
                raise SluiceError(
                    "UNAVAILABLE",
                    "no batch service runs on this platform: start it with `sluice up` "
                    "(or set SLUICE_BATCH_ADDRESS)",
                )
            address = found[0].address
        return cls(address, admin_token(settings, platform.state_dir))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any, timeout: float = 60) -> T:
        try:
            return method(request, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> SluiceError:
        code = exc.code()
        if code is grpc.StatusCode.UNAVAILABLE:
            return SluiceError("UNAVAILABLE", unreachable("the batch service", self.address, exc))
        return SluiceError(code.name, exc.details() or code.name)

    def invoke(
        self,
        endpoint: str,
        *,
        input: str,
        deployment: str = "",
        input_type: str = "",
        output_path: str = "",
        overrides: batch_pb2.JobOverrides | None = None,
        job_name: str = "",
        input_artifact: common_pb2.ArtifactRef | None = None,
    ) -> Any:
        """Start a job. A local input must be uploaded first (`RegistryClient.upload`) and
        given as `input_artifact`; `input` then only names it."""
        request = batch_pb2.InvokeBatchEndpointRequest(
            endpoint_name=endpoint,
            deployment_name=deployment,
            input=input,
            input_type=input_type,
            output_path=output_path,
            overrides=overrides or batch_pb2.JobOverrides(),
            job_name=job_name,
            input_artifact=input_artifact,
        )
        return self._call(self._stub.InvokeBatchEndpoint, request, timeout=300)

    def get(self, name: str) -> Any:
        return self._call(self._stub.GetJob, batch_pb2.GetJobRequest(name=name))

    def list(self, endpoint: str = "", deployment: str = "") -> list[Any]:
        jobs: list[Any] = []
        token = ""
        while True:
            page = common_pb2.PageRequest(page_size=PAGE_SIZE, page_token=token)
            reply = self._call(
                self._stub.ListJobs,
                batch_pb2.ListJobsRequest(
                    endpoint_name=endpoint, deployment_name=deployment, page=page
                ),
            )
            jobs.extend(reply.jobs)
            token = reply.page.next_page_token
            if not token:
                return jobs

    def cancel(self, name: str) -> Any:
        return self._call(self._stub.CancelJob, batch_pb2.CancelJobRequest(name=name))

    def download_output(self, name: str) -> Download:
        """An ended job's output folder as a tar stream (`download.save` writes it); raises
        SluiceError at once for an unknown job, one still running or one without output.
        No deadline, as for a followed log."""
        request = batch_pb2.DownloadJobOutputRequest(name=name)
        return started(self._stub.DownloadJobOutput(request, metadata=self._metadata), self._error)

    def logs(self, name: str, *, follow: bool) -> Iterator[Any]:
        request = batch_pb2.StreamJobLogsRequest(name=name, follow=follow)
        try:
            yield from self._stub.StreamJobLogs(request, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise SluiceError(exc.code().name, exc.details() or exc.code().name) from None
