"""Readiness, liveness and memory of local instances: one verdict per instance per pass.

Readiness is polled from the start (every pass) rather than after
`initial_delay`: an instance serves as soon as `init()` returns;
`initial_delay + failure_threshold x period` is its deadline. Liveness
honours `initial_delay` and `period` as written; `failure_threshold` failures
in a row replace the instance. Resident memory above the instance type's
ceiling (measured once a second) replaces it too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sluice.common.resources import OnlineDeploymentSpec, Probe
from sluice.provisioner.local import LocalBackend, LocalInstance


@dataclass(frozen=True)
class Ready:
    """It passed readiness just now."""


@dataclass(frozen=True)
class Replace:
    reason: str


@dataclass(frozen=True)
class NeverReady:
    """Not ready by its deadline: replace it, and the version is failing."""

    reason: str


Verdict = Ready | Replace | NeverReady | None


def readiness_deadline(probe: Probe) -> float:
    return probe.initial_delay_s + probe.failure_threshold * probe.period_s


def liveness_due(age_s: float, since_last_s: float, probe: Probe) -> bool:
    return age_s >= probe.initial_delay_s and since_last_s >= probe.period_s


class Health:
    def __init__(self, backend: LocalBackend):
        self._backend = backend
        self._last_liveness: dict[str, float] = {}

    def forget(self, instance_id: str) -> None:
        self._last_liveness.pop(instance_id, None)

    async def check(self, inst: LocalInstance, spec: OnlineDeploymentSpec) -> Verdict:
        age = time.time() - inst.started_at.timestamp()
        if not inst.ready:
            ready = spec.readiness_probe
            if await self._backend.probe(inst, "/ready", ready.timeout_s):
                return Ready()
            deadline = readiness_deadline(ready)
            return NeverReady(f"not ready after {deadline}s") if age > deadline else None
        if inst.rss_bytes > inst.memory_limit:
            return Replace(f"memory above {inst.memory_limit} bytes")
        live, now = spec.liveness_probe, time.monotonic()
        if not liveness_due(age, now - self._last_liveness.get(inst.id, 0), live):
            return None
        self._last_liveness[inst.id] = now
        if await self._backend.probe(inst, "/", live.timeout_s):
            inst.liveness_failures = 0
            return None
        inst.liveness_failures += 1
        if inst.liveness_failures >= live.failure_threshold:
            return Replace(f"failed liveness {inst.liveness_failures} times")
        return None
