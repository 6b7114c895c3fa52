"""One reporter for every backend: a deployment's status, instances and events.

Order matters to the other services: the instance list is written before any
event about it (the traffic controller re-reads MongoDB when an event arrives),
and each state change is published once per spec version:

    Provisioning (first version) / Updating (later ones) -> Succeeded | Failed
"""

from __future__ import annotations

from sluice.common.resources import Instance, OnlineDeploymentDoc, ProvisioningState
from sluice.provisioner.compute import Observation
from sluice.provisioner.events import ProvisionerEvents
from sluice.provisioner.store import ProvisionerStore


class Reporter:
    def __init__(self, key: str, store: ProvisionerStore, events: ProvisionerEvents):
        self.key = key
        self.endpoint, _, self.name = key.partition("/")
        self._store = store
        self._events = events
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
        self._announced = version
        state = ProvisioningState.updating if self._succeeded else ProvisioningState.provisioning
        await self._store.set_state(self.key, version, state)
        await self._publish("deployment", state.value.lower(), version=version)

    async def report(self, doc: OnlineDeploymentDoc, seen: Observation) -> None:
        """After the backend's pass: instances first, then Succeeded or Failed, once each."""
        await self.instances(seen)
        version = doc.meta.version
        if seen.failure is not None:
            if self._failed != version:
                self._failed = version
                await self._store.set_state(
                    self.key, version, ProvisioningState.failed, seen.failure
                )
                await self._publish(
                    "deployment", "failed", version=version, reason=seen.failure[:2000]
                )
            return
        if seen.settled and version not in (self._failed, self._succeeded):
            self._succeeded = version
            await self._store.set_state(
                self.key, version, ProvisioningState.succeeded, seen.message
            )
            await self._publish("deployment", "ready", version=version)

    async def instances(self, seen: Observation) -> None:
        """Write the instance list if it changed, then announce what happened to instances."""
        if seen.instances != self._written:
            await self._store.set_instances(self.key, seen.instances)
            self._written = list(seen.instances)
        for inst in seen.became_ready:
            await self._publish("instance", "ready", instance=inst.id, address=inst.address)
        for inst, reason in seen.draining:
            await self._publish(
                "instance", "draining", instance=inst.id, address=inst.address, reason=reason
            )
        for instance_id, reason in seen.stopped:
            await self._publish("instance", "stopped", instance=instance_id, reason=reason)

    async def _publish(self, entity: str, verb: str, **data: object) -> None:
        await self._events.publish(
            entity, verb, endpoint=self.endpoint, deployment=self.name, **data
        )
