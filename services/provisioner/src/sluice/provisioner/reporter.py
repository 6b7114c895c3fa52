"""One reporter for every backend: a deployment's status, instances and events.

Order matters to the other services: the instance list is written before any
event about it can be seen (the traffic controller re-reads MongoDB when an
event arrives): the list and the pass's instance events commit in one
transaction, and so does each state change with its event (store.py). Each
state change is published once per spec version:

    Provisioning (first version) / Updating (later ones) -> Succeeded | Failed
"""

from __future__ import annotations

from sluice.common.events.catalogue import (
    AUTOSCALE_SCALED,
    DEPLOYMENT_FAILED,
    DEPLOYMENT_PROVISIONING,
    DEPLOYMENT_READY,
    DEPLOYMENT_UPDATING,
    INSTANCE_DRAINING,
    INSTANCE_READY,
    INSTANCE_STOPPED,
    DeploymentFailed,
    DeploymentProgress,
    InstanceDraining,
    InstanceReady,
    InstanceStopped,
)
from sluice.common.resources import Instance, OnlineDeploymentDoc, ProvisioningState
from sluice.provisioner.compute import Observation
from sluice.provisioner.store import Announce, ProvisionerStore


class Reporter:
    def __init__(self, key: str, store: ProvisionerStore):
        self.key = key
        self.endpoint, _, self.name = key.partition("/")
        self._store = store
        self._written: list[Instance] | None = None
        self._announced: int | None = None  # the version Provisioning/Updating was said for
        self._succeeded: int | None = None
        self._failed: int | None = None

    async def starting(self, doc: OnlineDeploymentDoc) -> None:
        """Before the backend works on `doc` (a build may take minutes): a version not
        reported yet is Provisioning (the first) or Updating (a later one)."""
        version = doc.meta.version
        if self._succeeded is None and doc.meta.provisioning_state is ProvisioningState.succeeded:
            # Served before (a provisioner restart): it stays Succeeded while it recovers.
            self._succeeded = version
        if version in (self._announced, self._succeeded, self._failed):
            return
        state, spec = (
            (ProvisioningState.updating, DEPLOYMENT_UPDATING)
            if self._succeeded
            else (ProvisioningState.provisioning, DEPLOYMENT_PROVISIONING)
        )
        await self._store.set_state(
            self.key, version, state, announce=Announce(spec, self._progress(version))
        )
        self._announced = version

    async def report(self, doc: OnlineDeploymentDoc, seen: Observation) -> None:
        """After the backend's pass: instances first, then Succeeded or Failed, once each."""
        await self.instances(seen)
        version = doc.meta.version
        if seen.failure is not None:
            if self._failed != version:
                reason = seen.failure
                failed = DeploymentFailed(
                    endpoint=self.endpoint, name=self.name, version=version, reason=reason[:2000]
                )
                await self._store.set_state(
                    self.key, version, ProvisioningState.failed, reason,
                    Announce(DEPLOYMENT_FAILED, failed),
                )  # fmt: skip
                self._failed = version
            return
        if seen.settled and version not in (self._failed, self._succeeded):
            await self._store.set_state(
                self.key, version, ProvisioningState.succeeded, seen.message,
                Announce(DEPLOYMENT_READY, self._progress(version)),
            )  # fmt: skip
            self._succeeded = version

    async def instances(self, seen: Observation) -> None:
        """Write the instance list if it changed, with the events of what happened to
        instances in this pass (one transaction)."""
        events = [
            Announce(
                INSTANCE_READY,
                InstanceReady(
                    endpoint=self.endpoint, name=self.name, instance=i.id, address=i.address
                ),
            )
            for i in seen.became_ready
        ]
        events += [
            Announce(
                INSTANCE_DRAINING,
                InstanceDraining(
                    endpoint=self.endpoint,
                    name=self.name,
                    instance=i.id,
                    address=i.address,
                    reason=reason,
                ),
            )
            for i, reason in seen.draining
        ]
        events += [
            Announce(
                INSTANCE_STOPPED,
                InstanceStopped(endpoint=self.endpoint, name=self.name, instance=i, reason=reason),
            )
            for i, reason in seen.stopped
        ]
        events += [Announce(AUTOSCALE_SCALED, scaled) for scaled in seen.scaled]
        changed = seen.instances != self._written
        if not changed and not events:
            return
        await self._store.set_instances(self.key, seen.instances if changed else None, events)
        self._written = list(seen.instances)

    def _progress(self, version: int) -> DeploymentProgress:
        return DeploymentProgress(endpoint=self.endpoint, name=self.name, version=version)
