"""What a deployment's worker asks of a compute backend, and what it gets back.

A backend (local processes, Kubernetes) runs one deployment per
`DeploymentCompute`; the worker calls it once per pass and hands what it
observed to the one `Reporter`, which writes the status and instances and
publishes the same events whichever backend ran them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sluice.common.events.catalogue import AutoscaleScaled
from sluice.common.resources import Instance, OnlineDeploymentDoc


@dataclass
class Observation:
    """One pass of a backend over one deployment."""

    # The instances the gateway may balance over (ready or not yet): written to MongoDB.
    instances: list[Instance] = field(default_factory=list)
    # Every wanted instance of the current version is ready, and no older one is left.
    settled: bool = False
    # The status message that goes with Succeeded (the environment's substitutions).
    message: str = ""
    # Why the current version cannot run (None: it can, or it is not known yet).
    failure: str | None = None
    # Since the last pass: became ready; left routing (with why); stopped (id, why).
    became_ready: list[Instance] = field(default_factory=list)
    draining: list[tuple[Instance, str]] = field(default_factory=list)
    stopped: list[tuple[str, str]] = field(default_factory=list)
    # The deployment's own scale settings changed its count (target_utilization, scale to zero
    # when idle): published as `autoscale.scaled`, like an autoscale setting's decisions.
    scaled: list[AutoscaleScaled] = field(default_factory=list)
    # Something is in motion (starting, draining): look again soon.
    busy: bool = False


class DeploymentCompute(Protocol):
    """One deployment on one backend."""

    async def converge(self, doc: OnlineDeploymentDoc) -> Observation:
        """One step towards `doc`; never raises for a version that cannot run (see failure)."""
        ...

    async def remove(self) -> Observation:
        """One step towards nothing left (the deployment is deleted); `instances` and `busy`
        both empty/false once everything is gone."""
        ...

    async def stop_now(self, reason: str) -> None:
        """The provisioner is stopping: end what runs without draining."""
        ...


class ComputeBackend(Protocol):
    """A place deployments run: `deployment()` gives the unit that runs one of them."""

    def deployment(self, key: str) -> DeploymentCompute:
        """The unit that runs deployment `key` (`endpoint/name`)."""
        ...

    async def recover(self) -> list[str]:
        """At start, before any `deployment()`: take over what an earlier provisioner left
        running; return the deployments that had instances here (to be looked at first)."""
        ...
