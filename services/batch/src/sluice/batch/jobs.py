"""Batch jobs as MongoDB documents (collection `batch_jobs`), with Azure's states.

A job is written once by InvokeBatchEndpoint (Queued) and then only by the
runner that owns it: state changes are conditional on the current state, so
a cancel and a completion racing each other leave exactly one of them.
Progress counters are recomputed from the results stream and written whole,
so a restarted runner rebuilds the same numbers instead of adding twice.

Every state change (the insert included) commits in one MongoDB transaction
with its `sluice.events.batch.job.<state>` event in the outbox, as the
registry does: no event for a change that did not happen, no change
without its event, and NATS being down delays events but fails no job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, PyMongoError

from sluice.common.events import Outbox, Transaction
from sluice.common.events.catalogue import (
    BATCH_DEPLOYMENT_FAILED,
    BATCH_DEPLOYMENT_READY,
    BATCH_JOB,
    BatchDeploymentChanged,
    BatchDeploymentFailed,
    BatchJobChanged,
)
from sluice.common.mongo import Document
from sluice.common.resources import (
    BATCH_DEPLOYMENTS,
    BATCH_JOBS,
    ENVIRONMENT_BUILDING,
    STATUS_WARNING_PREFIX,
    BatchSettings,
    ProvisioningState,
    deployment_id,
    utcnow,
)

# Compute records the metrics service prices (sluice.metrics.costs): one per worker process.
INSTANCE_HISTORY = "instance_history"
# A job lists its input files in its document; Mongo documents stop at 16 MB.
MAX_FILES = 100_000
# A state change that lost a race with another write of the job (a progress update, a cancel
# request) is tried again this many times; its condition is checked again each time.
TRANSACTION_ATTEMPTS = 5
ACTOR = "sluice-batch"
T = TypeVar("T")


class JobState(StrEnum):
    queued = "Queued"
    running = "Running"
    completed = "Completed"
    failed = "Failed"
    canceled = "Canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.completed, JobState.failed, JobState.canceled})


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Progress(_Model):
    mini_batches_total: int = 0
    mini_batches_done: int = 0
    mini_batches_failed: int = 0
    files_total: int = 0
    files_succeeded: int = 0
    files_failed: int = 0


class JobError(_Model):
    """A mini-batch that failed after its retries: which files, which exception."""

    mini_batch: int
    files: tuple[str, ...]
    exception: str
    attempts: int


class Cost(_Model):
    """Instance-hours at the instance type's price, as Azure bills a job's nodes: an
    instance runs `workers_per_instance` workers (max_concurrency_per_instance), so its
    time is its workers' seconds shared among them."""

    instance_type: str = ""
    worker_seconds: float = 0.0
    price_per_hour: float = 0.0
    workers_per_instance: int = 1

    @property
    def instance_share(self) -> float:
        """The part of an instance one worker is."""
        return 1 / max(1, self.workers_per_instance)

    @property
    def instance_seconds(self) -> float:
        return self.worker_seconds * self.instance_share

    @property
    def cost(self) -> float:
        return round(self.instance_seconds / 3600 * self.price_per_hour, 6)


class Job(_Model):
    name: str
    endpoint_name: str
    deployment_name: str
    deployment_version: int
    state: JobState = JobState.queued
    input: str  # what the user gave
    # Registered assets it uses, `<kind>:<name>:<version>` (the registry's lineage reads them).
    assets: tuple[str, ...] = ()
    files: tuple[str, ...]  # the resolved input, in order
    output_path: str
    settings: BatchSettings  # the deployment's, with the job's overrides applied
    instance_count: int = 1
    instance_type: str = ""
    progress: Progress = Progress()
    errors: tuple[JobError, ...] = ()
    status_message: str = ""
    cost: Cost = Cost()
    cancel_requested: bool = False
    published: bool = False  # every mini-batch is on the work queue
    # This host's workers as (pid, start time), stopped by a resuming runner.
    worker_processes: tuple[tuple[int, float], ...] = ()
    created_by: str = ""
    # The W3C trace context of the invoke that created it (empty when untraced): the parent
    # of the job's span, whichever runner runs it (job_trace.py).
    trace: dict[str, str] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def workers(self) -> int:
        return self.instance_count * self.settings.max_concurrency_per_instance

    def mini_batches(self) -> list[list[str]]:
        size = self.settings.mini_batch_size
        return [list(self.files[i : i + size]) for i in range(0, len(self.files), size)]


def _document(job: Job) -> Document:
    return {"_id": job.name, **job.model_dump(mode="json")}


def _job(raw: Document) -> Job:
    return Job.model_validate({k: v for k, v in raw.items() if k != "_id"})


def emit_state(tx: Transaction, job: Job) -> None:
    """`sluice.events.batch.job.<state>`: thin, consumers re-read the job (GetJob)."""
    tx.emit(
        BATCH_JOB[job.state.value.lower()],
        BatchJobChanged(
            name=job.name,
            endpoint=job.endpoint_name,
            deployment=job.deployment_name,
            state=job.state.value,
            progress=job.progress.model_dump(),
            cost={
                **job.cost.model_dump(),
                "instance_seconds": job.cost.instance_seconds,
                "cost": job.cost.cost,
            },
        ),
        subject=job.name,
        actor=job.created_by or ACTOR,
    )


# A batch deployment version is waiting for its environment in these states.
WAITING = (ProvisioningState.creating.value, ProvisioningState.updating.value)


@dataclass(frozen=True)
class DeploymentVersion:
    """One version of one batch deployment, as stored (`created_at` as the document has it)."""

    endpoint: str
    name: str
    version: int
    created_at: str

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> DeploymentVersion:
        return cls(
            raw["spec"]["endpoint_name"],
            raw["spec"]["name"],
            int(raw["meta"]["version"]),
            raw["meta"]["created_at"],
        )


class JobStore:
    def __init__(self, db: AsyncDatabase[Document], outbox: Outbox):
        self._jobs = db[BATCH_JOBS]
        self._deployments = db[BATCH_DEPLOYMENTS]
        self._history = db[INSTANCE_HISTORY]
        self._outbox = outbox

    async def _transaction(self, write: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run `write` in a transaction with its events; again if it lost a race."""
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            try:
                async with self._outbox.transaction() as tx:
                    return await write(tx)
            except PyMongoError as exc:
                raced = not isinstance(exc, ConnectionFailure) and exc.has_error_label(
                    "TransientTransactionError"
                )
                if not raced or attempt == TRANSACTION_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _waiting(self, version: DeploymentVersion) -> dict[str, Any]:
        """The filter of a deployment version still waiting for its environment (`created_at`
        tells it from a namesake deleted and created again, which starts at version 1 too)."""
        return {
            "_id": deployment_id(version.endpoint, version.name),
            "meta.version": version.version,
            "meta.created_at": version.created_at,
            "meta.provisioning_state": {"$in": list(WAITING)},
        }

    async def claim_deployment(self, version: DeploymentVersion) -> None:
        """Say that a batch service builds this version's environment now (so a waiting
        CLI knows it was picked up); the settle replaces the message."""
        await self._deployments.update_one(
            {**self._waiting(version), "meta.status_message": ""},
            {"$set": {"meta.status_message": ENVIRONMENT_BUILDING}},
        )

    async def settle_deployment(
        self,
        version: DeploymentVersion,
        *,
        failure: str | None = None,
        warnings: tuple[str, ...] = (),
    ) -> bool:
        """A batch deployment version whose environment was built (or `failure`: was not)
        goes from Creating/Updating to Succeeded (its warnings in the status message) or
        Failed, with `batch_deployment.ready` / `.failed`; False if that version is no
        longer the one waiting (updated, deleted, or settled before)."""
        state = ProvisioningState.failed if failure is not None else ProvisioningState.succeeded
        message = (
            failure
            if failure is not None
            else "\n".join(f"{STATUS_WARNING_PREFIX}{w}" for w in warnings)
        )
        endpoint, name = version.endpoint, version.name

        async def write(tx: Transaction) -> bool:
            found = await self._deployments.find_one_and_update(
                self._waiting(version),
                {
                    "$set": {
                        "meta.provisioning_state": state.value,
                        "meta.status_message": message,
                        "meta.updated_at": utcnow().isoformat(),
                    }
                },
                session=tx.session,
            )
            if found is None:
                return False
            subject = f"{endpoint}/{name}"
            number = version.version
            if failure is not None:
                failed = BatchDeploymentFailed(
                    name=name, endpoint=endpoint, version=number, reason=failure[:2000]
                )
                tx.emit(BATCH_DEPLOYMENT_FAILED, failed, subject=subject, actor=ACTOR)
            else:
                ready = BatchDeploymentChanged(name=name, endpoint=endpoint, version=number)
                tx.emit(BATCH_DEPLOYMENT_READY, ready, subject=subject, actor=ACTOR)
            return True

        return await self._transaction(write)

    async def ensure_indexes(self) -> None:
        await self._jobs.create_index([("endpoint_name", 1), ("created_at", DESCENDING)])
        await self._jobs.create_index([("state", 1)])
        await self._jobs.create_index([("assets", 1)])

    async def insert(self, job: Job) -> None:
        """Store a new (Queued) job with its `queued` event."""

        async def write(tx: Transaction) -> None:
            await self._jobs.insert_one(_document(job), session=tx.session)
            emit_state(tx, job)

        await self._transaction(write)

    async def get(self, name: str) -> Job | None:
        raw = await self._jobs.find_one({"_id": name})
        return None if raw is None else _job(raw)

    async def page(
        self, *, endpoint: str, deployment: str, size: int, after: str
    ) -> tuple[list[Job], str]:
        """Newest first; the page token is the last job's name."""
        where: dict[str, Any] = {}
        if endpoint:
            where["endpoint_name"] = endpoint
        if deployment:
            where["deployment_name"] = deployment
        if after:
            last = await self._jobs.find_one({"_id": after}, {"created_at": 1})
            if last is not None:
                where["$or"] = [
                    {"created_at": {"$lt": last["created_at"]}},
                    {"created_at": last["created_at"], "_id": {"$lt": after}},
                ]
        cursor = self._jobs.find(where).sort([("created_at", -1), ("_id", -1)]).limit(size + 1)
        jobs = [_job(raw) async for raw in cursor]
        more = len(jobs) > size
        jobs = jobs[:size]
        return jobs, (jobs[-1].name if more and jobs else "")

    async def worker_started(self, job: Job, worker_id: str) -> None:
        """A worker's compute starts counting: the metrics service prices it like an instance."""
        await self._history.insert_one(
            {
                "_id": worker_id,
                "kind": "batch",
                "job": job.name,
                "endpoint": job.endpoint_name,
                "deployment": job.deployment_name,
                "instance_type": job.cost.instance_type,
                "price_per_hour": job.cost.price_per_hour,
                "instance_share": job.cost.instance_share,
                "started_at": utcnow().isoformat(),
                "stopped_at": None,
            }
        )

    async def workers_stopped(self, worker_ids: list[str], *, job: str | None = None) -> None:
        """Close the records of these workers (or of every open one of `job`)."""
        where: dict[str, Any] = {"stopped_at": None}
        where.update({"job": job} if job else {"_id": {"$in": worker_ids}})
        await self._history.update_many(where, {"$set": {"stopped_at": utcnow().isoformat()}})

    async def unfinished(self) -> list[Job]:
        states = [JobState.queued.value, JobState.running.value]
        return [_job(raw) async for raw in self._jobs.find({"state": {"$in": states}})]

    async def update(self, name: str, **fields: Any) -> Job | None:
        """Set fields (JSON-able values or models) and return the job as it now is."""
        values = {k: _plain(v) for k, v in fields.items()}
        raw = await self._jobs.find_one_and_update(
            {"_id": name}, {"$set": values}, return_document=ReturnDocument.AFTER
        )
        return None if raw is None else _job(raw)

    async def transition(
        self, name: str, to: JobState, *, when: set[JobState], **fields: Any
    ) -> Job | None:
        """Move to `to` only from one of the `when` states, with the new state's event;
        None (and no event) if the job was elsewhere."""
        values = {"state": to.value, **{k: _plain(v) for k, v in fields.items()}}

        async def write(tx: Transaction) -> Job | None:
            raw = await self._jobs.find_one_and_update(
                {"_id": name, "state": {"$in": [s.value for s in when]}},
                {"$set": values},
                return_document=ReturnDocument.AFTER,
                session=tx.session,
            )
            if raw is None:
                return None
            job = _job(raw)
            emit_state(tx, job)
            return job

        return await self._transaction(write)


def _plain(value: Any) -> Any:
    """A field value as stored: models, dates and enums as JSON types (like `_document`)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, StrEnum):
        return value.value
    return value
