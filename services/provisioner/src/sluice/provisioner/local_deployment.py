"""One deployment on the local backend: inference-server processes on this machine.

Each pass (`converge`): prepare a new spec version (artifacts, environment,
instance type: preparer.py), reap exited
processes, probe, measure and autoscale, then let `domain.plan` decide what to
start, drain and stop, and act on it. What happened goes back to the worker in
an `Observation` for the reporter.

- an instance that exits before it is ready failed its `init()`: the version
  fails with the exit code and the last log lines; the previous version keeps
  serving;
- an instance that exits, fails liveness or grows past its memory ceiling
  (health.py) is drained and replaced (auto-recovery);
- every stop is make-before-break (see domain.py): drained first, SIGTERM once
  the gateway no longer routes it;
- a restarted provisioner adopts the instances its predecessor left running
  (`LocalCompute.recover`): their processes are recognised by the pid and
  start time recorded when they started, and they go on serving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sluice.common.access import with_log_tail
from sluice.common.events.catalogue import AutoscaleScaled
from sluice.common.log import get_logger, readable_log
from sluice.common.resources import (
    Instance,
    OnlineDeploymentDoc,
    ScaleSettings,
    deployment_id,
)
from sluice.provisioner.activator import WAKE_DEADLINE_S, Activator
from sluice.provisioner.autoscale_counts import AutoscaleCounts
from sluice.provisioner.autoscaler import SCALE_IN_STABILIZATION_S, LocalScaling
from sluice.provisioner.compute import Observation
from sluice.provisioner.domain import (
    Desired,
    Drain,
    Found,
    Observed,
    Start,
    Stop,
    adoption,
    plan,
)
from sluice.provisioner.health import Health, NeverReady, Ready, Replace
from sluice.provisioner.local import LocalBackend, LocalInstance, adopt, reap_orphans, tail
from sluice.provisioner.preparer import Generation, PrepareError, Preparer, same_runtime
from sluice.provisioner.routing import ROUTE_WAIT_S, RoutingView
from sluice.provisioner.store import ProvisionerStore

log = get_logger(__name__)
LOG_LINES_IN_ERRORS = 20
USAGE_EVERY_S = 5.0
MEASURE_EVERY_S = 1.0
CPU_SETTLE_S = 2.0  # target_utilization reads an instance's CPU from this long after ready
ADOPT_PROBE_S = 2.0

UsageSink = Callable[[dict[str, object]], Awaitable[None]]


@dataclass(frozen=True)
class LocalServices:
    """What every local deployment shares."""

    backend: LocalBackend
    preparer: Preparer
    store: ProvisionerStore  # instance-hour history (cost accounting)
    routing: RoutingView
    autoscale: AutoscaleCounts  # what autoscale settings decided
    activator: Activator | None = None  # holds requests for deployments scaled to zero
    # `scale_settings.min_instances: 0` without an autoscale setting: zero after this long idle.
    idle_s: float = 300.0
    # target_utilization's scale-in stabilization window (the HPA's; docs/autoscale.md)
    scale_in_stabilization_s: float = SCALE_IN_STABILIZATION_S


class LocalDeployment:
    def __init__(
        self,
        key: str,
        services: LocalServices,
        usage: UsageSink,
        adopted: Sequence[LocalInstance] = (),
    ):
        self.key = key
        self.endpoint, _, self.name = key.partition("/")
        self._s = services
        self._usage = usage
        self.instances: list[LocalInstance] = list(adopted)
        self.generation: Generation | None = None
        self._failed: tuple[int, str] | None = None  # (version, why)
        self._version: int | None = None  # of the document last converged to
        self._scaling = LocalScaling(services.scale_in_stabilization_s)
        self._health = Health(services.backend)
        self._last_measure = 0.0
        self._last_usage = 0.0
        self._pass = Observation()
        # Scale to zero (activator.py): when a held request woke the deployment (wall clock),
        # and since when the activator is listed as its instance (monotonic).
        self._activated_at: float | None = None
        self._activator_since: float | None = None
        self._held = 0  # requests the activator holds for this deployment right now
        self._removing = False  # deleted: nothing is listed any more, not even the activator
        # `scale_settings.min_instances: 0` (and no autoscale setting): zero once idle, i.e. no
        # instance starting and no request seen (liveness answers count them) for `idle_s`.
        self._zero_when_idle = False
        self._own = (1, ScaleSettings())  # the spec's instance_count and scale_settings
        self._created_at: datetime | None = None  # which deployment of that name this is
        self._last_active = time.monotonic()
        self._was_idle = False
        self._seen: dict[str, int | None] = {}  # instance id -> its last requests_seen
        if services.activator is not None:
            services.activator.register(self)

    # ---- the DeploymentCompute protocol ---------------------------------------------------

    async def converge(self, doc: OnlineDeploymentDoc) -> Observation:
        version = doc.meta.version
        self._version = version
        self._zero_when_idle = doc.spec.scale_settings.min_instances == 0
        self._own = (doc.spec.instance_count, doc.spec.scale_settings)
        self._created_at = doc.meta.created_at
        if self.generation is None or self.generation.version != version:
            await self._prepare(doc)
        await self._reap(version)
        await self._probe(doc)
        self._measure()
        self._autoscale(doc)
        await self._act(self._desired(doc))
        await self._sample_usage()
        return self._observation(settled=self._settled(doc))

    async def remove(self) -> Observation:
        if self._s.activator is not None:
            self._s.activator.forget(self)
        self._removing, self._activator_since = True, None
        await self._reap(None)
        await self._act(None)
        if not self.instances:  # the deployment's private copies and user go last
            await asyncio.to_thread(self._s.backend.remove_workspace, self.endpoint, self.name)
        return self._observation()

    async def stop_now(self, reason: str) -> None:
        for inst in list(self.instances):
            await self._stop(inst, reason)

    def _observation(self, settled: bool = False) -> Observation:
        seen, self._pass = self._pass, Observation()
        seen.instances = [
            Instance(
                id=i.id,
                address=i.address,
                ready=i.ready,
                started_at=i.started_at,
            )
            for i in self.instances
            if i.alive and not i.draining
        ]
        activator = self._activator_instance()
        if activator is not None:
            seen.instances.append(activator)
            if self._activator_since is None:
                self._activator_since = time.monotonic()
                seen.became_ready.append(activator)  # the gateway routes it from now on
        else:
            self._activator_since = None
        seen.settled = settled
        seen.message = self.generation.status_message if self.generation else ""
        if self._failed is not None and self._failed[0] == self._version:
            seen.failure = self._failed[1]
        seen.busy = any(not i.ready or i.draining for i in self.instances)
        return seen

    # ---- preparing a version ----------------------------------------------------------------

    async def _prepare(self, doc: OnlineDeploymentDoc) -> None:
        version = doc.meta.version
        if self._failed is not None and self._failed[0] == version:
            return
        if self.generation is not None and same_runtime(self.generation.doc, doc):
            # Only the count (or labels) changed: keep every healthy instance.
            for inst in self.instances:
                if inst.spec_version == self.generation.version:
                    inst.spec_version = version
            self.generation = self.generation.renumbered(doc)
            return
        try:
            self.generation = await self._s.preparer.prepare(doc)
        except PrepareError as exc:
            await self._fail(version, str(exc))
            return
        log.info("deployment_prepared", deployment=self.key, version=version)

    async def _fail(self, version: int, message: str) -> None:
        if self._failed is not None and self._failed[0] == version:
            return
        self._failed = (version, message)
        for inst in [i for i in self.instances if i.spec_version == version]:
            await self._drain(inst, "deployment version failed")
        if self.generation is not None and self.generation.version == version:
            self.generation = None
        log.error("deployment_failed", deployment=self.key, version=version, reason=message)

    # ---- observing the processes ----------------------------------------------------------

    async def _reap(self, version: int | None) -> None:
        """Drop instances that exited; an exit before ready (of `version`) is a failed init()."""
        for inst in [i for i in self.instances if not i.alive]:
            self.instances.remove(inst)
            reason = inst.exit_reason()
            await self._stopped(inst, inst.drain_reason or reason)
            if inst.draining:
                continue
            if not inst.ready and inst.spec_version == version:
                await self._fail(
                    inst.spec_version,
                    with_log_tail(
                        f"instance {inst.id} {reason} before it was ready (init() failed?).",
                        readable_log(tail(inst.log_path, LOG_LINES_IN_ERRORS)),
                    ),
                )
            else:
                log.warning("instance_died", deployment=self.key, instance=inst.id, reason=reason)

    async def _probe(self, doc: OnlineDeploymentDoc) -> None:
        for inst in [i for i in self.instances if not i.draining]:
            verdict = await self._health.check(inst, doc.spec)
            if isinstance(verdict, Ready):
                inst.ready, inst.ready_at = True, time.monotonic()
                log.info("instance_ready", deployment=self.key, instance=inst.id)
                self._pass.became_ready.append(
                    Instance(id=inst.id, address=inst.address, ready=True)
                )
            elif isinstance(verdict, Replace):
                await self._replace(inst, verdict.reason)
            elif isinstance(verdict, NeverReady):
                await self._replace(inst, verdict.reason)
                await self._fail(inst.spec_version, f"instance {inst.id} was {verdict.reason}")

    def _measure(self) -> None:
        """One CPU/memory measurement per instance per second, shared by autoscaling and
        the usage samples."""
        now = time.monotonic()
        if now - self._last_measure < MEASURE_EVERY_S:
            return
        self._last_measure = now
        for inst in self.instances:
            inst.measure()
        seen = {i.id: i.requests_seen for i in self.instances if i.alive}
        busy = any(
            i.requests_seen is None or not self._routed(i, now)
            for i in self.instances
            if i.alive and not i.draining
        )
        served = any(self._seen.get(id_, n) != n for id_, n in seen.items())
        if busy or served:  # starting, not told yet, not reachable yet, or a request came in
            self._last_active = now  # (an instance that went is no activity: it would wake
        self._seen = seen  # what went to zero)

    def _routed(self, inst: LocalInstance, now: float) -> bool:
        """Ready and sent requests by the gateway (or ready long enough that it must be).

        Until then no client can reach it, so its quiet is no idleness either (a slow
        gateway update would otherwise take a woken deployment back to zero before a
        second request could reach it)."""
        routes = self._s.routing.routes(self.key, inst.address)
        return inst.ready and (routes is not False or now - inst.ready_at > ROUTE_WAIT_S)

    def _setting_count(self) -> int | None:
        """What an autoscale setting decided for this deployment (not for an earlier one of
        the same name: a capacity decided before a delete and re-create is not this one's)."""
        return self._s.autoscale.count(self.key, self._created_at)

    def _autoscale(self, doc: OnlineDeploymentDoc) -> None:
        if self._setting_count() is not None:
            return  # an autoscale setting decides the count
        serving = [
            i
            for i in self.instances
            if i.ready
            and not i.draining
            and i.spec_version == doc.meta.version
            and i.measured
            # Start-up CPU (imports, init(), warm-up) is no load: as Kubernetes' HPA ignores a
            # new pod's CPU for a while, readings start once an instance has been ready a bit.
            and time.monotonic() - i.ready_at >= CPU_SETTLE_S
        ]
        busy = sum(i.cpu_percent for i in serving)
        capacity = sum(100 * i.workers for i in serving)
        change = self._scaling.poll(
            time.monotonic(),
            doc.spec.instance_count,
            doc.spec.scale_settings,
            busy=busy,
            capacity=capacity,
            measured=len(serving),
        )
        if change is not None:
            scale = doc.spec.scale_settings
            self._scaled(
                f"CpuUtilizationPercentage target {scale.target_utilization_percentage}%",
                "CpuUtilizationPercentage",
                round(100 * busy / capacity, 1),
                *change,
            )
            log.info(
                "autoscaled", deployment=self.key, instances_before=change[0],
                instances_after=change[1],
            )  # fmt: skip

    # ---- scale to zero ------------------------------------------------------------------------

    def activate(self) -> None:
        """A request is held for this deployment: run at least one instance."""
        self._held += 1
        self._activated_at = time.time()
        self._last_active = time.monotonic()

    def release(self) -> None:
        """A held request went to an instance (or gave up). Only a decision made after this
        may take the deployment back to zero: the ones before never saw the request."""
        self._held -= 1
        self._activated_at = time.time()
        self._last_active = time.monotonic()

    def ready_address(self) -> str | None:
        """An instance that can take a held request now."""
        for inst in self.instances:
            if inst.ready and inst.alive and not inst.draining:
                return inst.address
        return None

    def _decided(self) -> int | None:
        """Zero for an idle deployment whose scale settings allow it (None: its own count).
        Else the autoscale setting's count; a wake makes 0 into 1 until a decision made on
        metric data entirely after the wake says 0 again (a decision on the minutes before
        it, when nobody asked, must not stop the instance a held request waits for)."""
        decided = self._setting_count()
        if decided is None and self._zero_when_idle:
            idle = self._idle()
            if idle != self._was_idle:
                self._was_idle = idle
                log.info("idle_scale_to_zero" if idle else "idle_woken", deployment=self.key)
                running = len([i for i in self.instances if i.alive and not i.draining])
                rule = f"no request for {self._s.idle_s:g}s (min_instances: 0)"
                if idle:
                    self._scaled(rule, "RequestsSeen", 0.0, running, 0)
                else:  # woken by a held request: back to the deployment's own count
                    woken = self._scaling.desired(*self._own)
                    self._scaled(f"woken ({rule})", "RequestsSeen", 1.0, 0, woken)
            return 0 if idle else None
        if decided == 0 and self._held:
            # A request waits for an instance: whatever the metrics say (the held request is
            # counted only once served), zero now would leave it waiting out its deadline.
            return 1
        if decided == 0 and self._activated_at is not None:
            if self._s.autoscale.decided_at(self.key) > self._activated_at:
                self._activated_at = None  # decided again on what came after the wake
            else:
                return 1
        return decided

    def _scaled(self, rule: str, metric: str, value: float, old: int, new: int) -> None:
        """A decision of the deployment's own scale settings, published as `autoscale.scaled`
        (setting name `scale_settings`) with this pass's other events."""
        self._pass.scaled.append(
            AutoscaleScaled(
                name="scale_settings",
                endpoint=self.endpoint,
                deployment=self.name,
                profile="",
                reason="rule",
                rule=rule,
                rule_index=None,
                metric=metric,
                value=value,
                old_count=old,
                new_count=new,
            )
        )

    def idle_since_start(self) -> None:
        """Adopted at zero after a provisioner restart: idle already, so it stays at zero
        until a request comes (a `scale_settings` zero; a setting's zero is in its capacity)."""
        self._last_active = time.monotonic() - self._s.idle_s
        self._was_idle = True

    def _idle(self) -> bool:
        return not self._held and time.monotonic() - self._last_active >= self._s.idle_s

    def _may_be_at_zero(self) -> bool:
        """An autoscale setting decided zero, or the deployment's own scale settings allow it."""
        decided = self._setting_count()
        return decided == 0 or (decided is None and self._zero_when_idle)

    def _activator_instance(self) -> Instance | None:
        """At zero (or waking from it, until an instance is ready) the activator is listed."""
        activator = self._s.activator
        if activator is None or not activator.address or self._removing:
            return None
        if not self._may_be_at_zero():
            return None
        if self._decided() != 0 and self.ready_address() is not None:
            return None
        return Instance(
            id=f"{self.name}-activator",
            address=activator.address,
            ready=True,
            holds_requests_s=WAKE_DEADLINE_S,
        )

    def _activator_routed(self) -> bool:
        activator = self._s.activator
        if activator is None or self._activator_since is None:
            return False
        routes = self._s.routing.routes(self.key, activator.address)
        return routes is True or time.monotonic() - self._activator_since > ROUTE_WAIT_S

    # ---- deciding and acting ------------------------------------------------------------------

    def _desired(self, doc: OnlineDeploymentDoc) -> Desired:
        version = doc.meta.version
        gen = self.generation
        runnable = gen is not None and gen.version == version
        runnable = runnable and not (self._failed is not None and self._failed[0] == version)
        decided = self._decided()
        count = self._scaling.desired(doc.spec.instance_count, doc.spec.scale_settings, decided)
        if count == 0 and self.instances and not self._activator_routed():
            count = 1  # make before break: the last instance leaves once the activator serves
        return Desired(version, count, runnable)

    def _settled(self, doc: OnlineDeploymentDoc) -> bool:
        desired = self._desired(doc)
        if not desired.runnable:
            return False
        current = [i for i in self.instances if i.spec_version == desired.version]
        ready = [i for i in current if i.ready and not i.draining]
        return len(ready) >= desired.count and len(current) == len(self.instances)

    def _observe(self) -> list[Observed]:
        """The instances as the planner sees them, with what the gateway routes."""
        now = time.monotonic()
        observed = []
        for inst in self.instances:
            routes = self._s.routing.routes(self.key, inst.address)
            routed = self._routed(inst, now)
            unrouted = inst.draining and (
                routes is not True or now - inst.draining_since > ROUTE_WAIT_S
            )
            observed.append(
                Observed(
                    id=inst.id,
                    version=inst.spec_version,
                    started=inst.started_at.timestamp(),
                    ready=inst.ready,
                    routed=routed,
                    draining=inst.draining,
                    unrouted=unrouted,
                    drain_reason=inst.drain_reason,
                )
            )
        return observed

    async def _act(self, desired: Desired | None) -> None:
        by_id = {i.id: i for i in self.instances}
        for action in plan(desired, self._observe()):
            if isinstance(action, Start):
                assert self.generation is not None
                await self._start(self.generation)
            elif isinstance(action, Drain):
                await self._drain(by_id[action.instance], action.reason)
            elif isinstance(action, Stop):
                await self._stop(by_id[action.instance], action.reason)

    async def _start(self, gen: Generation) -> None:
        inst = self._s.backend.start(gen.doc.spec, gen.version, gen.plan, gen.instance_type)
        self.instances.append(inst)
        log.info("instance_started", deployment=self.key, instance=inst.id, version=gen.version)
        await self._s.store.instance_started(
            instance_id=inst.id,
            endpoint=self.endpoint,
            deployment=self.name,
            instance_type=gen.instance_type.name,
            price_per_hour=gen.instance_type.price_per_hour,
            started_at=inst.started_at,
            process=inst.record(),
        )

    async def _replace(self, inst: LocalInstance, reason: str) -> None:
        log.warning("instance_replaced", deployment=self.key, instance=inst.id, reason=reason)
        await self._drain(inst, reason)

    async def _drain(self, inst: LocalInstance, reason: str) -> None:
        """Out of routing (this pass's report); `plan` stops it once the gateway drops it."""
        if inst.draining:
            return
        inst.draining, inst.draining_since, inst.drain_reason = True, time.monotonic(), reason
        log.info("instance_draining", deployment=self.key, instance=inst.id, reason=reason)
        self._pass.draining.append((Instance(id=inst.id, address=inst.address), reason))

    async def _stop(self, inst: LocalInstance, reason: str) -> None:
        """SIGTERM: the instance answers what it has in flight and exits."""
        if inst in self.instances:
            self.instances.remove(inst)
        await asyncio.to_thread(self._s.backend.stop, inst)
        await self._stopped(inst, reason)

    async def _stopped(self, inst: LocalInstance, reason: str) -> None:
        self._health.forget(inst.id)
        await self._s.store.instance_stopped(inst.id, reason)
        self._pass.stopped.append((inst.id, reason))

    async def _sample_usage(self) -> None:
        now = time.monotonic()
        if now - self._last_usage < USAGE_EVERY_S or not self.instances:
            return
        self._last_usage = now
        for inst in self.instances:
            if inst.measured:
                await self._usage(usage_sample(inst))


def usage_sample(inst: LocalInstance) -> dict[str, object]:
    """CPU % and resident memory of an instance and its worker processes."""
    return {
        "instance": inst.id,
        "endpoint": inst.endpoint,
        "deployment": inst.deployment,
        "cpu_percent": round(inst.cpu_percent, 1),
        "rss_bytes": inst.rss_bytes,
        "memory_limit_bytes": inst.memory_limit,
        "time": time.time(),
    }


class LocalCompute:
    """The local compute backend (ComputeBackend): one LocalDeployment each."""

    def __init__(
        self,
        services: LocalServices,
        usage: Callable[[str, str, dict[str, object]], Awaitable[None]],
    ):
        self._services = services
        self._usage = usage
        self._adopted: dict[str, list[LocalInstance]] = {}  # by deployment, until its worker runs
        self._at_zero: set[str] = set()  # deployments recovered at zero, until their worker runs

    def deployment(self, key: str) -> LocalDeployment:
        endpoint, _, name = key.partition("/")

        async def usage(sample: dict[str, object]) -> None:
            await self._usage(endpoint, name, sample)

        deployment = LocalDeployment(key, self._services, usage, self._adopted.pop(key, []))
        if key in self._at_zero:  # it stays there (no wake-up because the provisioner restarted)
            self._at_zero.discard(key)
            deployment.idle_since_start()
        return deployment

    async def recover(self) -> list[str]:
        """At start: take over the instances an earlier provisioner left running.

        A provisioner killed outright leaves its instances serving. Each one whose
        process is the one recorded at its start (pid and start time) is adopted as
        it is (domain.adoption); the planner then keeps, rolls or replaces it make
        before break. Records of processes that are gone are closed. Returns the
        deployments to look at first (those with instances, live or not).
        """
        store, backend = self._services.store, self._services.backend
        listed = await store.recorded_instances()
        # At zero when the predecessor died: only the activator (its address is the dead
        # provisioner's; the new one lists its own).
        self._at_zero = {
            key
            for key, insts in listed.items()
            if insts and all(i.id.endswith("-activator") for i in insts)
        }
        for record in await store.running_processes():
            key = deployment_id(record.endpoint, record.deployment)
            inst = adopt(record)
            if inst is None:
                await store.instance_stopped(record.id, "exited while the provisioner was down")
                continue
            entry = next((i for i in listed.get(key, ()) if i.id == inst.id), None)
            found = Found(
                listed=entry is not None,
                was_ready=entry is not None and entry.ready,
                answers=await backend.probe(inst, "/ready", ADOPT_PROBE_S),
            )
            decision = adoption(found)
            now = time.monotonic()
            inst.ready, inst.ready_at = decision.ready, now
            if decision.drain_reason:
                inst.draining, inst.draining_since = True, now
                inst.drain_reason = decision.drain_reason
            self._adopted.setdefault(key, []).append(inst)
            log.info("instance_adopted", deployment=key, instance=inst.id, ready=inst.ready,
                     draining=decision.drain_reason)  # fmt: skip
        # Listed with no record to recognise them by (started by an older provisioner):
        # only an inference server listening at such an address is stopped.
        kept = {i.address for adopted in self._adopted.values() for i in adopted}
        unknown = {
            i.address: (key, i.id)
            for key, insts in listed.items()
            for i in insts
            if key not in self._at_zero  # the activator was in the dead process: nothing to reap
        }
        for address in await asyncio.to_thread(reap_orphans, set(unknown) - kept):
            key, instance_id = unknown[address]
            log.warning("orphan_instance_stopped", deployment=key, instance=instance_id)
            await store.instance_stopped(instance_id, "provisioner restarted")
        return sorted(set(listed) | set(self._adopted))
