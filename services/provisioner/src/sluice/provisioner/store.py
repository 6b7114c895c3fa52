"""The provisioner's MongoDB code: read deployments, write their status and instances.

Instances live in the provisioner's own collection (`deployment_instances`),
so no other service writes them and the registry never overwrites them.
Status writes are conditional on the spec version they are about, so a
result for an old version never overwrites the state of a newer one.

Every status or instance-list write commits in one transaction with the
events that announce it (the outbox, like the registry's): a change is
stored with its events or not at all, and a status write that no longer
applies (a newer version is stored) announces nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TypeVar

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, PyMongoError

from sluice.common.events import Outbox, Transaction
from sluice.common.events.catalogue import AUTOSCALE_SCALED, AutoscaleScaled, EventSpec, Payload
from sluice.common.mongo import Document
from sluice.common.resources import (
    DEPLOYMENT_INSTANCES,
    KEEP_SCALE_DECISIONS,
    ONLINE_DEPLOYMENTS,
    SCALE_DECISIONS,
    ComputeKind,
    DeploymentInstancesDoc,
    Instance,
    OnlineDeploymentDoc,
    ProvisioningState,
    from_document,
    to_document,
    utcnow,
)

INSTANCE_HISTORY = "instance_history"
ACTOR = "provisioner"
TRANSACTION_ATTEMPTS = 5  # a race with a registry write on the same document is retried
T = TypeVar("T")


@dataclass(frozen=True)
class Announce:
    """An event that commits with a write: `spec` with its typed payload."""

    spec: EventSpec[Any]
    data: Payload


def _decision_entry(scaled: AutoscaleScaled) -> Document:
    """A decision as the metrics service stores an autoscale setting's (autoscale.py)."""
    entry: Document = scaled.model_dump(exclude={"name", "endpoint", "deployment"})
    return {"time": utcnow(), **entry}


@dataclass(frozen=True)
class ProcessRecord:
    """How a restarted provisioner recognises a local instance its predecessor started.

    Kept in the instance's `instance_history` record (under `process`) until it stops:
    pid and start time together say it is the same process (pids get reused).
    """

    address: str
    version: int  # the spec version it runs
    pid: int
    create_time: float  # psutil's, in seconds since the epoch
    workers: int
    memory_limit: int
    log_path: str
    # Written by versions whose instances ran a gRPC server (the gateway now bridges gRPC
    # to the HTTP port); kept so their records still read.
    grpc_address: str = ""


@dataclass(frozen=True)
class RunningRecord:
    """An instance started and not stopped, as its history record says."""

    id: str
    endpoint: str
    deployment: str
    started_at: datetime
    process: ProcessRecord


class ProvisionerStore:
    def __init__(self, db: AsyncDatabase[Document], outbox: Outbox):
        self._outbox = outbox
        self._deployments = db[ONLINE_DEPLOYMENTS]
        self._history = db[INSTANCE_HISTORY]
        self._instances = db[DEPLOYMENT_INSTANCES]
        self._decisions = db[SCALE_DECISIONS]

    async def ensure_indexes(self) -> None:
        await self._history.create_index([("endpoint", 1), ("deployment", 1), ("started_at", 1)])

    async def deployment(self, key: str) -> OnlineDeploymentDoc | None:
        raw = await self._deployments.find_one({"_id": key})
        if raw is None:
            return None
        return from_document(OnlineDeploymentDoc, raw)

    async def deployment_keys(self) -> list[str]:
        return [str(raw["_id"]) async for raw in self._deployments.find({}, {"_id": 1})]

    async def recorded_instances(self) -> dict[str, list[Instance]]:
        """The instances every local deployment lists, by deployment key; pods of kubernetes
        deployments are the cluster's, not ours."""
        found: dict[str, list[Instance]] = {}
        pods = {
            str(raw["_id"])
            async for raw in self._deployments.find(
                {"spec.kind": ComputeKind.kubernetes.value}, {"_id": 1}
            )
        }
        async for raw in self._instances.find({"_id": {"$nin": sorted(pods)}}):
            doc = from_document(DeploymentInstancesDoc, raw)
            if doc.instances:
                found[str(raw["_id"])] = list(doc.instances)
        return found

    async def set_state(
        self,
        key: str,
        version: int,
        state: ProvisioningState,
        message: str = "",
        announce: Announce | None = None,
    ) -> bool:
        """Write the state of `version` with its event; False (and no event) when a newer
        version is stored (or the deployment is gone)."""

        async def write(tx: Transaction) -> bool:
            result = await self._deployments.update_one(
                {"_id": key, "meta.version": version},
                {
                    "$set": {
                        "meta.provisioning_state": state.value,
                        "meta.status_message": message,
                        "meta.updated_at": utcnow().isoformat(),
                    }
                },
                session=tx.session,
            )
            applies = result.matched_count == 1
            if applies and announce is not None:
                tx.emit(announce.spec, announce.data, subject=key, actor=ACTOR)
            return applies

        return await self._transaction(write)

    async def set_instances(
        self, key: str, instances: Sequence[Instance] | None, announce: Sequence[Announce] = ()
    ) -> None:
        """Write the instance list (None: unchanged) and the instance events that go with it;
        a scale decision among them is also kept in `scale_decisions` (its last 20)."""

        async def write(tx: Transaction) -> None:
            if instances is not None and not instances:
                await self._instances.delete_one({"_id": key}, session=tx.session)
            elif instances is not None:
                doc = to_document(DeploymentInstancesDoc(instances=tuple(instances)), key)
                await self._instances.replace_one(
                    {"_id": key}, doc, upsert=True, session=tx.session
                )
            for event in announce:
                tx.emit(event.spec, event.data, subject=key, actor=ACTOR)
            decisions = [
                _decision_entry(event.data)
                for event in announce
                if event.spec is AUTOSCALE_SCALED and isinstance(event.data, AutoscaleScaled)
            ]
            if decisions:
                await self._decisions.update_one(
                    {"_id": key},
                    {
                        "$push": {
                            "decisions": {
                                "$each": decisions[::-1],  # most recent first
                                "$position": 0,
                                "$slice": KEEP_SCALE_DECISIONS,
                            }
                        }
                    },
                    upsert=True,
                    session=tx.session,
                )

        await self._transaction(write)

    async def forget_decisions(self, key: str) -> None:
        """A deleted deployment's decisions go with it."""
        await self._decisions.delete_one({"_id": key})

    async def _transaction(self, write: Callable[[Transaction], Awaitable[T]]) -> T:
        """`write` and its events in one transaction; a lost race is tried again."""
        attempt = 1
        while True:
            try:
                async with self._outbox.transaction() as tx:
                    return await write(tx)
            except PyMongoError as exc:
                lost_race = not isinstance(exc, ConnectionFailure)
                if not lost_race or not exc.has_error_label("TransientTransactionError"):
                    raise
                if attempt == TRANSACTION_ATTEMPTS:
                    raise
                attempt += 1

    async def instance_started(
        self,
        *,
        instance_id: str,
        endpoint: str,
        deployment: str,
        instance_type: str,
        price_per_hour: float,
        started_at: datetime,
        process: ProcessRecord | None = None,
    ) -> None:
        """Start of an instance-hour interval: what cost accounting sums up (and, for a local
        instance, how to find its process again)."""
        record: Document = {
            "_id": instance_id,
            "endpoint": endpoint,
            "deployment": deployment,
            "instance_type": instance_type,
            "price_per_hour": price_per_hour,
            "started_at": started_at.isoformat(),
            "stopped_at": None,
        }
        if process is not None:
            record["process"] = asdict(process)
        await self._history.insert_one(record)

    async def running_processes(self) -> list[RunningRecord]:
        """Local instances started and not stopped (by this provisioner or an earlier one)."""
        return [
            RunningRecord(
                id=str(raw["_id"]),
                endpoint=raw["endpoint"],
                deployment=raw["deployment"],
                started_at=datetime.fromisoformat(raw["started_at"]),
                process=ProcessRecord(**raw["process"]),
            )
            async for raw in self._history.find({"stopped_at": None, "process": {"$exists": True}})
        ]

    async def instance_stopped(self, instance_id: str, reason: str) -> None:
        await self._history.update_one(
            {"_id": instance_id},
            {"$set": {"stopped_at": utcnow().isoformat(), "stop_reason": reason}},
        )
