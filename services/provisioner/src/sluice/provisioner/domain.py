"""What to do next with a deployment's instances: `plan(desired, observed) -> actions`.

Pure: the worker observes (processes, probes, the gateway's `traffic.applied`),
this decides, the worker acts. Make before break is the rule every plan keeps:

- an instance leaves routing (Drain) only once enough instances of the wanted
  version are ready *and routed* to replace it;
- it is stopped (Stop: SIGTERM) only once the gateway no longer routes it;
- while old instances serve, new ones start one at a time (a surge of one);
- a version that cannot run starts nothing, and the old instances keep serving.

A provisioner restarted after a crash takes over the instances its
predecessor left running (`adoption`): nothing that serves is stopped to be
started again; the planner then treats them like any other instance (an old
version is rolled, a sick one drained and replaced, make before break).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Observed:
    """One instance as the planner sees it."""

    id: str
    version: int  # the spec version it runs
    started: float  # orders instances oldest first
    ready: bool = False  # passed its readiness probe
    routed: bool = False  # ready, and the gateway balances over it
    draining: bool = False  # out of routing, waiting for the gateway to drop it
    unrouted: bool = False  # draining, and the gateway no longer sends it requests
    drain_reason: str = ""


@dataclass(frozen=True)
class Desired:
    version: int
    count: int
    runnable: bool = True  # prepared and not failed: instances of it may start


@dataclass(frozen=True)
class Start:
    version: int


@dataclass(frozen=True)
class Drain:
    """Take the instance out of routing (publish the instance list without it)."""

    instance: str
    reason: str


@dataclass(frozen=True)
class Stop:
    """SIGTERM: the gateway no longer routes the instance, it finishes what it has and exits."""

    instance: str
    reason: str


Action = Start | Drain | Stop


def plan(desired: Desired | None, observed: Sequence[Observed]) -> list[Action]:
    """The next steps towards `desired` (None: the deployment is deleted)."""
    actions: list[Action] = [
        Stop(i.id, i.drain_reason) for i in observed if i.draining and i.unrouted
    ]
    serving = [i for i in observed if not i.draining]
    if desired is None:
        return actions + [Drain(i.id, "deployment deleted") for i in _oldest_first(serving)]
    current = [i for i in serving if i.version == desired.version]
    old = [i for i in serving if i.version != desired.version]
    if desired.runnable and len(current) < desired.count:
        starting = any(not i.ready for i in current)
        if not old:
            actions += [Start(desired.version)] * (desired.count - len(current))
        elif not starting:
            actions.append(Start(desired.version))  # a surge of one while old ones serve
    # An old instance leaves once a routed new one takes its place: `count` keep serving.
    routed_new = sum(i.routed for i in current)
    leaving = routed_new + len(old) - desired.count
    actions += [
        Drain(i.id, "replaced by a newer version") for i in _least_useful(old)[: max(0, leaving)]
    ]
    extra = len(current) - desired.count
    actions += [Drain(i.id, "scaled in") for i in _least_useful(current)[: max(0, extra)]]
    return actions


@dataclass(frozen=True)
class Found:
    """A live instance an earlier provisioner started (same pid and start time as recorded)."""

    listed: bool  # in its deployment's instance list (the gateway may route it); else draining
    was_ready: bool  # listed as ready
    answers: bool  # passes its readiness probe now


@dataclass(frozen=True)
class Adopt:
    """Take the instance over as it is; a `drain_reason` adopts it out of routing."""

    ready: bool
    drain_reason: str = ""


def adoption(found: Found) -> Adopt:
    """How a restarted provisioner takes over an instance its predecessor left running."""
    if not found.listed:
        return Adopt(found.answers, "was leaving when the provisioner restarted")
    if found.answers:
        return Adopt(ready=True)
    if found.was_ready:
        return Adopt(False, "not ready after the provisioner restarted")
    return Adopt(ready=False)  # still starting: its readiness deadline runs from its start


def _oldest_first(instances: list[Observed]) -> list[Observed]:
    return sorted(instances, key=lambda i: i.started)


def _least_useful(instances: list[Observed]) -> list[Observed]:
    """Who leaves first: instances not serving yet, then the oldest."""
    return sorted(instances, key=lambda i: (i.routed, i.ready, i.started))
