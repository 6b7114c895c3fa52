"""The batch service's behaviour: invoke, read, cancel, follow logs; one runner per live job.

Invoke checks everything it can before the job exists (endpoint, deployment,
settings, the input itself), so a bad request is refused at once and never
becomes a job that fails later; one invoke creates exactly one job.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from sluice.batch import inputs
from sluice.batch.fetch import PUBLIC_ONLY, UrlPolicy
from sluice.batch.jobs import WAITING, Cost, DeploymentVersion, Job, JobState, JobStore
from sluice.batch.output import OutputError, output_folder
from sluice.batch.runner import (
    JobAborted,
    JobRunner,
    RunnerContext,
    instance_type_of,
    job_dir,
    runtime_of,
    spare_key_for,
)
from sluice.batch.workspace import existing_account, remove_deployment
from sluice.common import tracing
from sluice.common.artifacts import ARTIFACT_URI_PREFIX, ArtifactError, parse_artifact_uri
from sluice.common.isolation import IsolationError
from sluice.common.log import get_logger
from sluice.common.resources import (
    BATCH_DEPLOYMENTS,
    BATCH_ENDPOINTS,
    ArtifactRef,
    BatchDeploymentDoc,
    BatchEndpointDoc,
    BatchSettings,
    OutputAction,
    ProvisioningState,
    deployment_id,
    from_document,
)
from sluice.v1 import assets_pb2, assets_pb2_grpc

log = get_logger(__name__)
JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DATASTORE_URI = re.compile(r"^azureml://datastores/([^/]+)/paths/(.*)$")
CANCEL_WAIT_S = 10.0


class InvalidArgument(ValueError):
    pass


class NotFound(LookupError):
    pass


class AlreadyExists(ValueError):
    pass


class FailedPrecondition(ValueError):
    pass


@dataclass(frozen=True)
class Overrides:
    """`--set` values of one invoke; None = the deployment's."""

    mini_batch_size: int | None = None
    instance_count: int | None = None
    error_threshold: int | None = None
    max_retries: int | None = None
    timeout_s: int | None = None
    output_file_name: str | None = None
    max_concurrency_per_instance: int | None = None


@dataclass(frozen=True)
class InvokeRequest:
    endpoint_name: str
    deployment_name: str = ""
    input: str = ""
    input_type: str = ""
    output_path: str = ""
    job_name: str = ""
    overrides: Overrides = Overrides()
    input_artifact: ArtifactRef | None = None  # a local input the caller uploaded


def _at_least(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise InvalidArgument(f"{name} must be at least {low}, got {value}")


def apply_overrides(settings: BatchSettings, o: Overrides) -> BatchSettings:
    _at_least("mini_batch_size", o.mini_batch_size, 1)
    _at_least("instance_count", o.instance_count, 1)
    _at_least("error_threshold", o.error_threshold, -1)
    _at_least("retry_settings.max_retries", o.max_retries, 0)
    _at_least("retry_settings.timeout", o.timeout_s, 1)
    _at_least("max_concurrency_per_instance", o.max_concurrency_per_instance, 1)
    name = o.output_file_name
    if name is not None and (not name or "/" in name or name in {".", ".."}):
        raise InvalidArgument(f"output_file_name {name!r} must be a plain file name")
    retry = settings.retry_settings.model_copy(
        update={
            k: v
            for k, v in {"max_retries": o.max_retries, "timeout_s": o.timeout_s}.items()
            if v is not None
        }
    )
    update: dict[str, Any] = {
        k: v
        for k, v in {
            "mini_batch_size": o.mini_batch_size,
            "error_threshold": o.error_threshold,
            "output_file_name": o.output_file_name,
            "max_concurrency_per_instance": o.max_concurrency_per_instance,
        }.items()
        if v is not None
    }
    return settings.model_copy(update={**update, "retry_settings": retry})


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("background_task_failed", error=repr(error), exc_info=error)


class BatchService:
    def __init__(
        self,
        ctx: RunnerContext,
        state_dir: Path,
        registry: assets_pb2_grpc.AssetsStub | None = None,
        admin_token: str | None = None,
        path_roots: Sequence[Path] = (),
        urls: UrlPolicy = PUBLIC_ONLY,
    ):
        self.ctx = ctx
        self.registry = registry  # data assets are the registry's
        self.registry_metadata = (("authorization", f"Bearer {admin_token or ''}"),)
        self.store: JobStore = ctx.store
        self.datastore = state_dir / "datastore"
        # The only local folders a job reads or writes (inputs.py says why): the datastore,
        # the artifact store (uploaded inputs, data assets) and the operator's own.
        roots = (self.datastore, ctx.artifacts.root, *path_roots)
        self.roots = tuple(root.resolve() for root in roots)
        ctx.roots = self.roots  # its runners check each input again as they copy it
        self.urls = urls  # the hosts http(s) inputs may come from (fetch.py says why)
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        # (endpoint, deployment) warming now -> whether to warm it again once done
        self._warming: dict[tuple[str, str], bool] = {}

    # ---- runners -----------------------------------------------------------------------

    def _launch(self, job: Job) -> None:
        task = asyncio.create_task(JobRunner(self.ctx, job).run(), name=f"job-{job.name}")
        self._runners[job.name] = task
        task.add_done_callback(lambda _: self._runners.pop(job.name, None))

    async def resume(self) -> None:
        """Start a runner for every job a previous run of the service left unfinished
        (and forget the NATS users of jobs that ended while it was away)."""
        unfinished = await self.store.unfinished()
        if self.ctx.job_users is not None:
            await asyncio.to_thread(self.ctx.job_users.keep_only, {j.name for j in unfinished})
        for job in unfinished:
            if job.name not in self._runners:
                log.info("job_resuming", job=job.name, state=job.state.value)
                self._launch(job)

    def warm_soon(self, endpoint: str, deployment: str) -> None:
        """Start `warm` in the background (it may build the deployment's environment)."""
        key = (endpoint, deployment)
        if key in self._warming:  # one at a time, then once more: it read an older version
            self._warming[key] = True
            # Say at once that the newer version is taken care of (a waiting CLI would
            # otherwise think no batch service runs while the older build goes on).
            self._in_background(self._claim(endpoint, deployment))
            return
        self._warming[key] = False

        async def warm_until_current() -> None:
            try:
                while True:
                    try:
                        await self.warm(endpoint, deployment)
                    except Exception:  # Mongo away: the 30-s pass warms it again
                        log.exception("warm_up_failed", endpoint=endpoint, deployment=deployment)
                    if not self._warming[key]:
                        break
                    self._warming[key] = False
            finally:
                del self._warming[key]

        self._in_background(warm_until_current())

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task kept until it ends (and cancelled at shutdown); what it
        raises is logged."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    async def warm(self, endpoint: str, deployment: str) -> None:
        """Build the deployment's environment and settle a waiting version (Succeeded, or
        Failed with the build's message), then have its `instance_count x
        max_concurrency_per_instance` workers waiting as spares, so its first job starts
        without the workers' start-up. A Failed version is left alone: an update builds it
        again."""
        raw = await self.ctx.db[BATCH_DEPLOYMENTS].find_one(
            {"_id": deployment_id(endpoint, deployment)}
        )
        if raw is None:
            return  # deleted since
        version = DeploymentVersion.of(raw)
        state = raw["meta"]["provisioning_state"]
        if state == ProvisioningState.failed.value:
            return
        waiting = state in WAITING
        if waiting:
            await self.store.claim_deployment(version)
        failure: str | None = None
        try:
            doc = from_document(BatchDeploymentDoc, raw)
            runtime = await runtime_of(self.ctx, doc.spec)
        except JobAborted as exc:  # its environment does not build
            failure = str(exc)
            log.info("warm_up_skipped", endpoint=endpoint, deployment=deployment, reason=failure)
        except Exception as exc:  # e.g. a model folder it cannot read: say so, not hang
            log.exception("warm_up_failed", endpoint=endpoint, deployment=deployment)
            failure = (
                f"the batch service could not prepare it ({type(exc).__name__}); its log says why"
            )
        if failure is not None:
            if waiting:
                await self.store.settle_deployment(version, failure=failure)
            return
        if waiting and not await self.store.settle_deployment(version, warnings=runtime.warnings):
            return  # updated (its own warm-up follows) or deleted meanwhile: no spares for it
        spec = runtime.spec
        try:
            key = await asyncio.to_thread(spare_key_for, self.ctx, runtime)
        except (IsolationError, OSError) as exc:
            log.info("warm_up_skipped", endpoint=endpoint, deployment=deployment, reason=str(exc))
            return
        self.ctx.spares.want(key, spec.instance_count * spec.settings.max_concurrency_per_instance)
        log.info(
            "warm_up", endpoint=endpoint, deployment=deployment, spares=self.ctx.spares.waiting(key)
        )

    async def _claim(self, endpoint: str, deployment: str) -> None:
        raw = await self.ctx.db[BATCH_DEPLOYMENTS].find_one(
            {"_id": deployment_id(endpoint, deployment)}
        )
        if raw is not None and raw["meta"]["provisioning_state"] in WAITING:
            await self.store.claim_deployment(DeploymentVersion.of(raw))

    async def settle_waiting(self) -> None:
        """Warm every batch deployment still Creating or Updating that no warm-up here is
        building: its event may have come while no batch service ran (at start-up), or been
        lost (app.py runs this every SETTLE_EVERY_S too)."""
        cursor = self.ctx.db[BATCH_DEPLOYMENTS].find(
            {"meta.provisioning_state": {"$in": list(WAITING)}},
            {"spec.endpoint_name": 1, "spec.name": 1},
        )
        async for raw in cursor:
            key = (raw["spec"]["endpoint_name"], raw["spec"]["name"])
            if key not in self._warming:
                self.warm_soon(*key)

    def forget_soon(self, endpoint: str, deployment: str) -> None:
        """A deleted batch deployment: stop its spares, remove their folder and its user."""
        self._in_background(self.forget(endpoint, deployment))

    async def forget(self, endpoint: str, deployment: str) -> None:
        account = existing_account(endpoint, deployment)
        if account is None:
            return  # not root (spares are shared by environment then), or never ran
        stopped = self.ctx.spares.forget_user((account.uid, account.gid))
        await asyncio.to_thread(remove_deployment, self.ctx.state_dir, endpoint, deployment)
        log.info("deployment_forgotten", endpoint=endpoint, deployment=deployment, spares=stopped)

    async def shutdown(self) -> None:
        for task in self._background:
            task.cancel()
        tasks = list(self._runners.values())
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- invoke ------------------------------------------------------------------------

    def _datastore_path(self, uri: str) -> Path:
        """`azureml://datastores/<ds>/paths/<p>` as what it names, `<state>/datastore/<ds>/<p>`
        (unchecked here: `inputs` and `_output_path` check that it lies under `roots`)."""
        match = DATASTORE_URI.match(uri)
        assert match is not None
        return self.datastore / match.group(1) / match.group(2).strip("/")

    def _output_path(self, given: str, job: str) -> Path:
        if not given:
            return self.datastore / "workspaceblobstore" / "azureml" / job / "score"
        if DATASTORE_URI.match(given):
            path = self._datastore_path(given)
        else:
            path = Path(given.removeprefix("file://"))
            if not path.is_absolute():
                raise InvalidArgument(f"--output-path {given!r} must be absolute or azureml://...")
        try:  # written by the platform: never outside its folders (`..` and links resolved)
            checked = inputs.check_under(path, self.roots, "--output-path")
            output_folder(checked, create=False)  # nor in a deployment's own folder
        except (inputs.InputError, OutputError) as exc:
            raise InvalidArgument(str(exc)) from None
        return checked

    async def invoke(self, request: InvokeRequest, actor: str) -> Job:
        endpoints = self.ctx.db[BATCH_ENDPOINTS]
        raw = await endpoints.find_one({"_id": request.endpoint_name})
        if raw is None:  # names ignore case (a host name gives them lower-cased)
            raw = await endpoints.find_one({"_key": request.endpoint_name.casefold()})
        if raw is None:
            raise NotFound(
                f"batch endpoint {request.endpoint_name!r} does not exist "
                "(`sluice batch-endpoint list`)"
            )
        endpoint = from_document(BatchEndpointDoc, raw)
        name = request.deployment_name or endpoint.spec.default_deployment
        if not name:
            raise InvalidArgument(
                "Set a default deployment or provide a deployment name through cli command "
                "(at the scoring URI: the azureml-model-deployment header)."
            )
        raw = await self.ctx.db[BATCH_DEPLOYMENTS].find_one(
            {"_id": deployment_id(endpoint.spec.name, name)}
        )
        if raw is None:
            raise NotFound(
                f"deployment {name!r} does not exist in batch endpoint {endpoint.spec.name!r}"
            )
        deployment = from_document(BatchDeploymentDoc, raw)
        if deployment.meta.provisioning_state is ProvisioningState.failed:
            raise FailedPrecondition(
                f"deployment {name!r} failed: {deployment.meta.status_message} (fix it and "
                "`sluice batch-deployment update`, which builds it again)"
            )
        spec = deployment.spec
        if spec.model.registered:
            raise InvalidArgument(
                f"model {spec.model.registered!r} is a registered model; Sluice has no model "
                "registry yet: give the deployment's model a path"
            )
        for ref in (spec.model.artifact, spec.code_configuration.code):
            if ref is not None and not self.ctx.artifacts.exists(ref):
                raise InvalidArgument(f"artifact {ref.name!r} ({ref.digest}) is missing")
        if not spec.code_configuration.scoring_script and not (
            spec.model.artifact
            and (self.ctx.artifacts.path_of(spec.model.artifact) / "MLmodel").is_file()
        ):
            raise InvalidArgument(
                f"deployment {name!r} has no scoring script and its model is not an MLflow "
                "model: add code_configuration.scoring_script"
            )
        settings = apply_overrides(spec.settings, request.overrides)
        instance_count = request.overrides.instance_count or spec.instance_count
        job_name = request.job_name or f"batchjob-{uuid.uuid4().hex[:16]}"
        if not JOB_NAME.match(job_name):
            raise InvalidArgument(
                f"job name {job_name!r}: lower-case letters, digits, '-' and '_' (at most 63)"
            )
        if await self.store.get(job_name) is not None:
            raise AlreadyExists(f"job {job_name!r} already exists")
        output = self._output_path(request.output_path, job_name)
        written = output / settings.output_file_name
        if settings.output_action is OutputAction.append_row and written.exists():
            raise InvalidArgument(  # as on Azure: an earlier job's output is never replaced
                f"{written} already exists: a job does not overwrite another's output; "
                "choose another --output-path (or output_file_name)"
            )
        scratch = job_dir(self.ctx.jobs_dir, job_name)
        given, input_type = request.input, request.input_type
        assets = [f"model:{spec.model.asset}"] if spec.model.asset else []
        if spec.environment.registered:
            assets.append(f"environment:{spec.environment.registered}")
        if request.input_artifact is not None:
            given = self._uploaded(request.input_artifact)
        elif DATASTORE_URI.match(given.strip()):  # a datastore folder or file, as on Azure
            given = str(self._datastore_path(given.strip()))
        elif given.strip().startswith(ARTIFACT_URI_PREFIX):  # what `data show` prints as path
            try:
                given = self._uploaded(parse_artifact_uri(given))
            except ArtifactError as exc:
                raise InvalidArgument(f"input {given!r}: {exc}") from None
        elif given.strip().startswith("azureml:"):
            given, input_type, data = await self._data_asset(given.strip(), input_type)
            assets.append(data)
        try:
            files = await inputs.resolve(given, input_type, scratch, self.roots, self.urls)
        except (inputs.InputError, ArtifactError) as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise InvalidArgument(str(exc)) from None
        except BaseException:  # anything else, a cancelled call too: no job, no scratch left
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        instance_type, price = instance_type_of(self.ctx.catalogue, spec.compute)
        job = Job(
            name=job_name,
            endpoint_name=endpoint.spec.name,
            deployment_name=name,
            deployment_version=deployment.meta.version,
            input=request.input,
            assets=tuple(assets),
            files=tuple(str(f) for f in files),
            output_path=str(output),
            settings=settings,
            instance_count=instance_count,
            instance_type=instance_type,
            cost=Cost(
                instance_type=instance_type,
                price_per_hour=price,
                workers_per_instance=settings.max_concurrency_per_instance,
            ),
            created_by=actor,
            trace=tracing.inject(),
        )
        job = job.model_copy(
            update={
                "progress": job.progress.model_copy(
                    update={
                        "mini_batches_total": len(job.mini_batches()),
                        "files_total": len(files),
                    }
                )
            }
        )
        await self.store.insert(job)
        self._launch(job)
        return job

    def _uploaded(self, ref: ArtifactRef) -> str:
        """The path of a local input the caller uploaded (content-addressed, in our store)."""
        if not self.ctx.artifacts.exists(ref):
            raise InvalidArgument(
                f"uploaded input {ref.name!r} ({ref.digest}) is not in the artifact store"
            )
        return str(self.ctx.artifacts.path_of(ref))

    async def _data_asset(self, reference: str, input_type: str) -> tuple[str, str, str]:
        """A registered data asset (`azureml:name:version`, `azureml:name@latest`) as a path
        or URI, its type and its lineage key `data:<name>:<version>`, asked of the registry
        (Azure: only uri_file/uri_folder)."""
        if self.registry is None:
            raise InvalidArgument(
                f"input {reference!r} names a data asset, but this batch service has no "
                "registry to ask (set SLUICE_REGISTRY_ADDRESS)"
            )
        try:
            asset = await self.registry.GetAsset(
                assets_pb2.GetAssetRequest(kind="data", reference=reference),
                metadata=self.registry_metadata,
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise InvalidArgument(f"input {reference!r}: {exc.details()}") from None
        # Archived or not, as on Azure: "@latest" never picks an archived version, and one
        # named by its version is used.
        spec = asset.spec
        if spec.type not in {"uri_file", "uri_folder"}:
            raise InvalidArgument(
                f"input {reference!r} is a {spec.type or 'typeless'} data asset; batch jobs "
                "take uri_file or uri_folder data"
            )
        if spec.HasField("artifact") and spec.artifact.digest:
            ref = ArtifactRef(
                digest=spec.artifact.digest,
                name=spec.artifact.name,
                is_directory=spec.artifact.is_directory,
            )
            where = str(self.ctx.artifacts.path_of(ref))
        else:
            where = spec.path
        return where, input_type or spec.type, f"data:{spec.name}:{spec.version}"

    # ---- reads and cancel --------------------------------------------------------------

    async def get(self, name: str) -> Job:
        job = await self.store.get(name)
        if job is None:
            raise NotFound(f"job {name!r} does not exist (`sluice job list`)")
        return job

    async def output(self, name: str) -> Path:
        """An ended job's output folder, checked again to be the platform's all the way down
        (`output_folder`): NotFound when the job or its output does not exist,
        FailedPrecondition while it is queued or running."""
        job = await self.get(name)
        if not job.state.terminal:
            raise FailedPrecondition(
                f"job {name} is {job.state.value}: download it once it has ended"
            )
        try:
            folder = output_folder(Path(job.output_path), create=False)
        except OutputError as exc:
            raise FailedPrecondition(str(exc)) from None
        if not folder.is_dir():
            raise NotFound(
                f"job {name} ({job.state.value}) wrote no output "
                f"(`sluice job show -n {name}` says why)"
            )
        return folder

    async def cancel(self, name: str) -> Job:
        job = await self.get(name)
        if job.state.terminal:
            raise InvalidArgument(f"job {name!r} is already {job.state.value}")
        if job.state is JobState.queued:
            canceled = await self.store.transition(
                name, JobState.canceled, when={JobState.queued}, cancel_requested=True
            )
            if canceled is not None:
                return canceled
        await self.store.update(name, cancel_requested=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT_S
        while loop.time() < deadline:
            job = await self.get(name)
            if job.state.terminal:
                return job
            await asyncio.sleep(0.1)
        return job

    # ---- logs --------------------------------------------------------------------------

    def log_files(self, name: str) -> list[Path]:
        folder = job_dir(self.ctx.jobs_dir, name) / "logs"
        runner = folder / "runner.log"
        workers = sorted(folder.glob("worker-*.log"), key=lambda p: int(p.stem.split("-")[1]))
        return ([runner] if runner.exists() else []) + workers

    async def follow_logs(self, name: str, follow: bool) -> AsyncIterator[tuple[str, str]]:
        """(source, line) of the runner's and every worker's log; with `follow`, to the end."""
        await self.get(name)
        offsets: dict[Path, int] = {}
        while True:
            for path in self.log_files(name):
                start = offsets.get(path, 0)
                with path.open("rb") as handle:
                    handle.seek(start)
                    data = handle.read()
                complete = data[: data.rfind(b"\n") + 1]
                offsets[path] = start + len(complete)
                for line in complete.decode(errors="replace").splitlines():
                    yield path.stem, line
            if not follow:
                return
            job = await self.get(name)
            if job.state.terminal and name not in self._runners:
                follow = False  # one more pass picks up the last lines
                continue
            await asyncio.sleep(0.3)
