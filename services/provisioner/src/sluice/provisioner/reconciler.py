"""The reconciler: desired state (a deployment document) vs actual state (instances).

One `DeploymentWorker` per deployment serialises everything that happens to
it. It converges whenever an event wakes it and on a short tick, which also
drives the probes:

- a new spec version is prepared (artifacts, environment, instance type),
  then rolled make-before-break (domain.plan): a new instance starts (one at
  a time while old ones serve); once it is ready and the gateway routes it
  (`traffic.applied`), an old instance leaves routing (`instance.draining`);
  once the gateway no longer routes it, it gets SIGTERM, finishes what it
  has in flight and exits;
- `instance_count` changes add or remove instances without touching the
  healthy ones;
- an instance that exits, fails liveness `failure_threshold` times or grows
  past its memory ceiling is replaced (auto-recovery); the deployment stays
  `Succeeded` while at least one instance serves;
- an instance that exits before it is ready failed its `init()`: the version
  is marked `Failed` with the exit code and the last log lines, and the
  previous version's instances (if any) keep serving;
- a deleted deployment's instances drain the same way before they stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sluice.common.artifacts import ArtifactError, ArtifactStore
from sluice.common.catalogue import Catalogue, InstanceType, UnknownInstanceType
from sluice.common.environments import EnvironmentBuilder, EnvironmentError_
from sluice.common.log import get_logger, readable_log
from sluice.common.prometheus import RECONCILE_SECONDS
from sluice.common.resources import (
    STATUS_WARNING_PREFIX,
    ArtifactRef,
    ComputeKind,
    Instance,
    OnlineDeploymentDoc,
    ProvisioningState,
)
from sluice.provisioner.autoscaler import Autoscaler
from sluice.provisioner.domain import Desired, Drain, Observed, Start, Stop, plan
from sluice.provisioner.events import ProvisionerEvents
from sluice.provisioner.isolation import IsolationError
from sluice.provisioner.kubernetes import KubernetesBackend
from sluice.provisioner.local import InstancePlan, LocalBackend, LocalInstance, reap_orphans, tail
from sluice.provisioner.routing import ROUTE_WAIT_S, RoutingView
from sluice.provisioner.store import ProvisionerStore

log = get_logger(__name__)

TICK_S = 0.1  # while instances are starting
IDLE_TICK_S = 1.0
LOG_LINES_IN_ERRORS = 20
USAGE_EVERY_S = 5.0
MEASURE_EVERY_S = 1.0


class PrepareError(Exception):
    """A spec version cannot run (missing artifact, environment build, instance type)."""


@dataclass(frozen=True)
class Generation:
    """Everything needed to start instances of one spec version."""

    version: int
    doc: OnlineDeploymentDoc
    plan: InstancePlan
    instance_type: InstanceType
    # What the environment could not honour (python version, image, curated environment...),
    # kept on the deployment's status once it succeeds and printed by create/update.
    warnings: tuple[str, ...] = ()

    @property
    def status_message(self) -> str:
        return "\n".join(f"{STATUS_WARNING_PREFIX}{w}" for w in self.warnings)


@dataclass(frozen=True)
class Context:
    store: ProvisionerStore
    backend: LocalBackend
    environments: EnvironmentBuilder
    artifacts: ArtifactStore
    catalogue: Catalogue
    events: ProvisionerEvents
    routing: RoutingView
    kubernetes: KubernetesBackend | None = None


class DeploymentWorker:
    def __init__(self, key: str, ctx: Context):
        self.key = key
        self.endpoint, _, self.name = key.partition("/")
        self._ctx = ctx
        self.instances: list[LocalInstance] = []
        self.generation: Generation | None = None
        self.failed_version: int | None = None
        self._succeeded_version: int | None = None
        self._published: list[Instance] | None = None
        self._wake = asyncio.Event()
        self._last_liveness: dict[str, float] = {}
        self._last_usage = 0.0
        self._applied_version: int | None = None  # kubernetes: the spec version on the cluster
        self._autoscaler: Autoscaler | None = None
        self._last_autoscale = 0.0
        self._last_measure = 0.0
        self.done = False

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self.done:
            try:
                with RECONCILE_SECONDS.labels("provisioner").time():
                    await self.converge()
            except Exception:  # a bug here must not stop every other deployment
                log.exception("reconcile_failed", deployment=self.key)
            if self.done:
                return
            busy = any(not i.ready or i.draining for i in self.instances)
            tick = TICK_S if busy else IDLE_TICK_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=tick)
            self._wake.clear()

    # ---- one pass ------------------------------------------------------------------------

    async def converge(self) -> None:
        doc = await self._ctx.store.deployment(self.key)
        if doc is None:
            await self._teardown()
            return
        if doc.spec.kind is ComputeKind.kubernetes:
            await self._converge_kubernetes(doc)
            return
        version = doc.meta.version
        new_version = self.generation is None or self.generation.version != version
        if new_version and self.failed_version != version and not await self._prepare(doc):
            await self._publish_instances()
            return
        await self._reap(version)
        await self._probe(doc)
        self._measure()
        self._autoscale(doc)
        await self._act(self._desired(doc))
        await self._publish_instances()
        await self._report(doc)
        await self._sample_usage()

    async def _converge_kubernetes(self, doc: OnlineDeploymentDoc) -> None:
        """Kubernetes runs, probes and rolls the instances; this applies and reports."""
        version = doc.meta.version
        kube = self._ctx.kubernetes
        if self.failed_version == version:
            return
        if kube is None:
            await self._fail(
                version,
                "this is a kubernetes deployment, but the provisioner has no cluster: set "
                "SLUICE_KUBECONFIG (and SLUICE_KUBERNETES_NAMESPACE / _IMAGE) and restart it",
            )
            return
        if self._applied_version != version:
            try:
                await asyncio.to_thread(kube.apply, doc)
            except Exception as exc:  # the API server's answer is the reason to show
                await self._fail(version, f"applying to the cluster failed: {exc}")
                return
            self._applied_version = version
        ready = await asyncio.to_thread(kube.ready_replicas, self.endpoint, self.name)
        if ready >= doc.spec.instance_count and self._succeeded_version != version:
            address = kube.service_address(self.endpoint, self.name)
            await self._ctx.store.set_instances(
                self.key, [Instance(id=f"svc-{self.name}", address=address, ready=True)]
            )
            self._succeeded_version = version
            await self._ctx.store.set_state(self.key, version, ProvisioningState.succeeded)

    async def _prepare(self, doc: OnlineDeploymentDoc) -> bool:
        version = doc.meta.version
        if doc.meta.provisioning_state is ProvisioningState.succeeded:
            # Already served once (a provisioner restart): it stays Succeeded while it recovers.
            self._succeeded_version = version
        if self.generation is not None and _same_runtime(self.generation.doc, doc):
            # Only the count (or labels) changed: keep every healthy instance.
            for inst in self.instances:
                if inst.spec_version == self.generation.version:
                    inst.spec_version = version
            self.generation = Generation(
                version,
                doc,
                self.generation.plan,
                self.generation.instance_type,
                self.generation.warnings,
            )
            return True
        if self._succeeded_version != version:
            state = (
                ProvisioningState.updating
                if self._succeeded_version
                else ProvisioningState.provisioning
            )
            await self._ctx.store.set_state(self.key, version, state)
            await self._ctx.events.publish(
                "deployment", state.value.lower(), endpoint=self.endpoint,
                deployment=self.name, version=version,
            )  # fmt: skip
        try:
            self.generation = await self._generation(doc)
        except PrepareError as exc:
            await self._fail(version, str(exc))
            return False
        log.info("deployment_prepared", deployment=self.key, version=version)
        return True

    async def _generation(self, doc: OnlineDeploymentDoc) -> Generation:
        spec = doc.spec
        try:
            instance_type = self._ctx.catalogue.resolve(spec.instance_type)
            model = self._path(spec.model.artifact) if spec.model.artifact else None
            if spec.model.registered:
                raise PrepareError(
                    f"model {spec.model.registered!r} is a registered model reference; Sluice has "
                    "no model registry yet: give the model's `path:` instead"
                )
            code = spec.code_configuration
            code_path = self._path(code.code) if code.code else None
        except (UnknownInstanceType, ArtifactError) as exc:
            raise PrepareError(str(exc)) from exc
        try:
            env = await self._ctx.environments.ensure(spec.environment)
        except EnvironmentError_ as exc:
            raise PrepareError(str(exc)) from exc
        for warning in env.warnings:
            log.warning("environment_warning", deployment=self.key, warning=warning)
        plan = InstancePlan(
            python=env.python,
            model=model,
            code=code_path,
            scoring_script=code.scoring_script or None,
        )
        try:  # the deployment's own user and private copies of its files (isolation.py)
            plan = await asyncio.to_thread(self._ctx.backend.prepare, spec, plan)
        except (IsolationError, OSError) as exc:
            raise PrepareError(f"cannot isolate the deployment: {exc}") from exc
        return Generation(doc.meta.version, doc, plan, instance_type, env.warnings)

    def _path(self, ref: ArtifactRef) -> Path:
        path = self._ctx.artifacts.path_of(ref)
        if not path.exists():
            raise ArtifactError(f"artifact {ref.name!r} ({ref.digest}) is missing from the store")
        return path

    # ---- actual state ------------------------------------------------------------------------

    async def _reap(self, version: int | None) -> None:
        """Drop instances that exited; an exit before ready (of `version`) is a failed init()."""
        for inst in [i for i in self.instances if not i.alive]:
            self.instances.remove(inst)
            await self._publish_instances()  # gone before the state says why
            code = inst.exit_code()
            reason = f"exited with code {code}"
            await self._stopped(inst, reason)
            if inst.draining:
                continue
            if not inst.ready and inst.spec_version == version:
                await self._fail(
                    inst.spec_version,
                    f"instance {inst.id} {reason} before it was ready (init() failed?). "
                    f"Last log lines:\n{readable_log(tail(inst.log_path, LOG_LINES_IN_ERRORS))}",
                )
            else:
                log.warning("instance_died", deployment=self.key, instance=inst.id, code=code)

    async def _probe(self, doc: OnlineDeploymentDoc) -> None:
        spec = doc.spec
        now = time.monotonic()
        for inst in list(self.instances):
            age = time.time() - inst.started_at.timestamp()
            if inst.draining:
                continue
            if not inst.ready:
                ready_probe = spec.readiness_probe
                if await self._ctx.backend.probe(inst, "/ready", ready_probe.timeout_s):
                    inst.ready = True
                    inst.ready_at = time.monotonic()
                    log.info(
                        "instance_ready",
                        deployment=self.key,
                        instance=inst.id,
                        address=inst.address,
                    )
                    # The ready flag is written first: the event makes the traffic
                    # controller re-read it.
                    await self._publish_instances()
                    await self._ctx.events.publish(
                        "instance", "ready", endpoint=self.endpoint, deployment=self.name,
                        instance=inst.id, address=inst.address,
                    )  # fmt: skip
                    continue
                deadline = (
                    ready_probe.initial_delay_s
                    + ready_probe.failure_threshold * ready_probe.period_s
                )
                if age > deadline:
                    await self._replace(inst, f"not ready after {deadline}s")
                    await self._fail(
                        inst.spec_version, f"instance {inst.id} was not ready within {deadline}s"
                    )
                continue
            if inst.rss_bytes > inst.memory_limit:  # measured once a second by _measure
                await self._replace(inst, f"memory above {inst.memory_limit} bytes")
                continue
            live = spec.liveness_probe
            if (
                age < live.initial_delay_s
                or now - self._last_liveness.get(inst.id, 0) < live.period_s
            ):
                continue
            self._last_liveness[inst.id] = now
            if await self._ctx.backend.probe(inst, "/", live.timeout_s):
                inst.liveness_failures = 0
            else:
                inst.liveness_failures += 1
                if inst.liveness_failures >= live.failure_threshold:
                    await self._replace(inst, f"failed liveness {inst.liveness_failures} times")

    def _desired(self, doc: OnlineDeploymentDoc) -> Desired:
        gen = self.generation
        runnable = gen is not None and gen.version == doc.meta.version
        runnable = runnable and self.failed_version != doc.meta.version
        return Desired(doc.meta.version, self._desired_count(doc), runnable)

    def _observe(self) -> list[Observed]:
        """The instances as the planner sees them, with what the gateway routes."""
        now = time.monotonic()
        observed = []
        for inst in self.instances:
            routes = self._ctx.routing.routes(self.key, inst.address)
            routed = inst.ready and (routes is not False or now - inst.ready_at > ROUTE_WAIT_S)
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
        inst = self._ctx.backend.start(gen.doc.spec, gen.version, gen.plan, gen.instance_type)
        self.instances.append(inst)
        log.info("instance_started", deployment=self.key, instance=inst.id, version=gen.version)
        await self._ctx.store.instance_started(
            instance_id=inst.id,
            endpoint=self.endpoint,
            deployment=self.name,
            instance_type=gen.instance_type.name,
            price_per_hour=gen.instance_type.price_per_hour,
            started_at=inst.started_at,
        )

    async def _replace(self, inst: LocalInstance, reason: str) -> None:
        log.warning("instance_replaced", deployment=self.key, instance=inst.id, reason=reason)
        await self._drain(inst, reason)

    async def _drain(self, inst: LocalInstance, reason: str) -> None:
        """Out of routing; `plan` stops it once the gateway no longer routes it."""
        if inst.draining:
            return
        inst.draining, inst.draining_since, inst.drain_reason = True, time.monotonic(), reason
        await self._publish_instances()
        log.info("instance_draining", deployment=self.key, instance=inst.id, reason=reason)
        await self._ctx.events.publish(
            "instance", "draining", endpoint=self.endpoint, deployment=self.name,
            instance=inst.id, address=inst.address, reason=reason,
        )  # fmt: skip

    async def _stop(self, inst: LocalInstance, reason: str) -> None:
        """SIGTERM: the instance answers what it has in flight and exits."""
        if inst in self.instances:
            self.instances.remove(inst)
        await self._publish_instances()
        await asyncio.to_thread(self._ctx.backend.stop, inst)
        await self._stopped(inst, reason)

    async def _stopped(self, inst: LocalInstance, reason: str) -> None:
        self._last_liveness.pop(inst.id, None)
        await self._ctx.store.instance_stopped(inst.id, reason)
        await self._ctx.events.publish(
            "instance", "stopped", endpoint=self.endpoint, deployment=self.name,
            instance=inst.id, reason=reason,
        )  # fmt: skip

    async def _teardown(self) -> None:
        """Drain and stop every instance (over several passes), then end the worker."""
        if self._applied_version is not None and self._ctx.kubernetes is not None:
            await asyncio.to_thread(self._ctx.kubernetes.delete, self.endpoint, self.name)
            self._applied_version = None
        await self._reap(None)
        await self._act(None)
        if self.instances:
            return
        await asyncio.to_thread(self._ctx.backend.remove_workspace, self.endpoint, self.name)
        self.done = True
        log.info("deployment_removed", deployment=self.key)

    async def stop_all(self, reason: str) -> None:
        for inst in list(self.instances):
            await self._stop(inst, reason)

    # ---- autoscaling (scale_settings: target_utilization) -----------------------------------

    def _measure(self) -> None:
        """One CPU/memory measurement per instance per second, shared by autoscaling and
        the usage samples."""
        now = time.monotonic()
        if now - self._last_measure < MEASURE_EVERY_S:
            return
        self._last_measure = now
        for inst in self.instances:
            inst.measure()

    def _desired_count(self, doc: OnlineDeploymentDoc) -> int:
        if doc.spec.scale_settings.type != "target_utilization":
            return doc.spec.instance_count
        if self._autoscaler is None:
            scale = doc.spec.scale_settings
            start = min(max(doc.spec.instance_count, scale.min_instances, 1), scale.max_instances)
            self._autoscaler = Autoscaler(desired=start)
        scale = doc.spec.scale_settings
        return min(max(self._autoscaler.desired, scale.min_instances, 1), scale.max_instances)

    def _autoscale(self, doc: OnlineDeploymentDoc) -> None:
        scale = doc.spec.scale_settings
        if scale.type != "target_utilization":
            self._autoscaler = None
            return
        now = time.monotonic()
        if now - self._last_autoscale < scale.polling_interval_s:
            return
        self._last_autoscale = now
        serving = [
            i
            for i in self.instances
            if i.ready and i.spec_version == doc.meta.version and i.measured
        ]
        if not serving:
            return
        busy = sum(i.cpu_percent for i in serving)
        capacity = sum(100 * i.workers for i in serving)
        utilization = busy / capacity
        before = self._desired_count(doc)
        assert self._autoscaler is not None
        after = self._autoscaler.poll(utilization, scale)
        if after != before:
            log.info(
                "autoscaled",
                deployment=self.key,
                utilization=round(utilization, 3),
                instances_before=before,
                instances_after=after,
            )

    # ---- reporting ---------------------------------------------------------------------------

    async def _publish_instances(self) -> None:
        view = [
            Instance(id=i.id, address=i.address, ready=i.ready, started_at=i.started_at)
            for i in self.instances
            if i.alive and not i.draining
        ]
        if view != self._published:
            await self._ctx.store.set_instances(self.key, view)
            self._published = view

    async def _report(self, doc: OnlineDeploymentDoc) -> None:
        version = doc.meta.version
        if self.failed_version == version or self.generation is None:
            return
        current_ready = [
            i for i in self.instances if i.spec_version == version and i.ready and not i.draining
        ]
        old_left = [i for i in self.instances if i.spec_version != version]
        if (
            self._succeeded_version != version
            and len(current_ready) >= self._desired_count(doc)
            and not old_left
        ):
            self._succeeded_version = version
            await self._ctx.store.set_state(
                self.key, version, ProvisioningState.succeeded, self.generation.status_message
            )
            log.info("deployment_ready", deployment=self.key, version=version)
            await self._ctx.events.publish(
                "deployment", "ready", endpoint=self.endpoint, deployment=self.name, version=version
            )

    async def _fail(self, version: int, message: str) -> None:
        if self.failed_version == version:
            return
        self.failed_version = version
        for inst in [i for i in self.instances if i.spec_version == version]:
            await self._drain(inst, "deployment version failed")
        if self.generation is not None and self.generation.version == version:
            self.generation = None
        log.error("deployment_failed", deployment=self.key, version=version, reason=message)
        await self._ctx.store.set_state(self.key, version, ProvisioningState.failed, message)
        await self._ctx.events.publish(
            "deployment", "failed", endpoint=self.endpoint, deployment=self.name,
            version=version, reason=message[:2000],
        )  # fmt: skip

    async def _sample_usage(self) -> None:
        now = time.monotonic()
        if now - self._last_usage < USAGE_EVERY_S or not self.instances:
            return
        self._last_usage = now
        for inst in self.instances:
            if inst.measured:
                await self._ctx.events.usage(self.endpoint, self.name, usage_sample(inst))


# Fields that can change without restarting instances.
SCALING_FIELDS = frozenset({"instance_count", "scale_settings", "description", "tags"})


def _same_runtime(old: OnlineDeploymentDoc, new: OnlineDeploymentDoc) -> bool:
    keep = set(type(new.spec).model_fields) - SCALING_FIELDS
    return old.spec.model_dump(include=keep) == new.spec.model_dump(include=keep)


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


class Reconciler:
    """Keeps one worker per deployment and routes wake-ups to it."""

    def __init__(self, ctx: Context):
        self._ctx = ctx
        self._workers: dict[str, DeploymentWorker] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def worker(self, key: str) -> DeploymentWorker | None:
        return self._workers.get(key)

    async def routing_changed(self, key: str) -> None:
        """The gateway's routing of deployment `key` changed: its worker may go on."""
        worker = self._workers.get(key)
        if worker is not None:
            worker.wake()

    async def touch(self, key: str) -> None:
        worker = self._workers.get(key)
        if worker is None or worker.done:
            worker = DeploymentWorker(key, self._ctx)
            self._workers[key] = worker
            task = asyncio.create_task(worker.run(), name=f"deployment {key}")
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        worker.wake()

    def _forget(self, key: str, _task: asyncio.Task[None]) -> None:
        worker = self._workers.get(key)
        if worker is not None and worker.done:
            self._workers.pop(key, None)
            self._tasks.pop(key, None)

    async def touch_endpoint(self, endpoint: str) -> None:
        for key in list(self._workers):
            if key.startswith(endpoint + "/"):
                await self.touch(key)

    async def reap_orphans(self) -> None:
        """At start: instances recorded by a provisioner that died are stopped, then replaced.

        A provisioner that was killed outright leaves its instances running; adopting
        them would mean trusting processes we did not start, so they are replaced.
        """
        recorded = await self._ctx.store.recorded_instances()
        addresses = {inst.address for instances in recorded.values() for inst in instances}
        stopped = await asyncio.to_thread(reap_orphans, addresses)
        for key, instances in recorded.items():
            for inst in instances:
                if inst.address in stopped:
                    log.warning("orphan_instance_stopped", deployment=key, instance=inst.id)
                await self._ctx.store.instance_stopped(inst.id, "provisioner restarted")
            await self._ctx.store.set_instances(key, [])

    async def resync(self) -> None:
        """Wake every deployment in MongoDB and every one that still has instances."""
        keys: Iterable[str] = set(await self._ctx.store.deployment_keys()) | set(self._workers)
        for key in keys:
            await self.touch(key)

    async def shutdown(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for worker in self._workers.values():
            await worker.stop_all("provisioner stopping")
