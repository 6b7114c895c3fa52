"""The reconciler: desired state (a deployment document) vs what runs.

One `DeploymentWorker` per deployment serialises everything that happens to
it: each pass reads the document, lets the deployment's compute backend take a
step towards it (`compute.DeploymentCompute`: local processes or Kubernetes)
and hands what the backend observed to the one `Reporter` (status, instances,
events: the same for every backend). A pass runs whenever an event wakes the
worker and on a tick: short while something is in motion (instances starting
or draining), long otherwise. A deleted deployment's worker drains and stops
everything over several passes, then ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from opentelemetry import context as otel_context
from opentelemetry import trace

from sluice.common.log import get_logger
from sluice.common.prometheus import RECONCILE_SECONDS
from sluice.common.resources import ComputeKind, OnlineDeploymentDoc
from sluice.provisioner.compute import ComputeBackend, DeploymentCompute
from sluice.provisioner.reporter import Reporter
from sluice.provisioner.store import ProvisionerStore

log = get_logger(__name__)

TICK_S = 0.1  # while instances are starting or draining
IDLE_TICK_S = 1.0


@dataclass(frozen=True)
class Context:
    store: ProvisionerStore
    backends: Mapping[ComputeKind, ComputeBackend]


class DeploymentWorker:
    def __init__(self, key: str, ctx: Context, kind: ComputeKind | None = None):
        """`kind`: the backend it already runs on (instances adopted at start), if any."""
        self.key = key
        self._ctx = ctx
        self._reporter = Reporter(key, ctx.store)
        self._kind = kind
        self._compute: DeploymentCompute | None = None
        # The creation time of the document `_compute` runs: a deployment deleted and
        # created again under the same name starts again at version 1, so its versions
        # cannot tell the two apart (None: adopted at start, or nothing built yet).
        self._created_at: datetime | None = None
        if kind is not None:
            self._compute = ctx.backends[kind].deployment(key)
        self._wake = asyncio.Event()
        self._busy = True
        self.done = False
        # The trace of the change being carried out: passes are its spans until it settles.
        self._trace: otel_context.Context | None = None

    def wake(self, trace_context: otel_context.Context | None = None) -> None:
        if trace_context is not None:
            self._trace = trace_context
        self._wake.set()

    async def run(self) -> None:
        while not self.done:
            try:
                with RECONCILE_SECONDS.labels("provisioner").time(), self._traced_pass():
                    await self.converge()
            except Exception:  # a bug here must not stop every other deployment
                log.exception("reconcile_failed", deployment=self.key)
            if self.done:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), timeout=TICK_S if self._busy else IDLE_TICK_S
                )
            self._wake.clear()

    @contextlib.contextmanager
    def _traced_pass(self) -> Iterator[None]:
        """A span for the pass while a traced change is in motion (none otherwise)."""
        if self._trace is None:
            yield
            return
        tracer = trace.get_tracer("sluice.provisioner")
        attributes = {"sluice.deployment_key": self.key}
        with tracer.start_as_current_span("reconcile", self._trace, attributes=attributes):
            yield
        if not self._busy:
            self._trace = None  # settled: later ticks belong to no change

    async def converge(self) -> None:
        """One pass."""
        doc = await self._ctx.store.deployment(self.key)
        if doc is None or self._kind not in (None, doc.spec.kind) or self._recreated(doc):
            # Deleted, moved to another kind of compute, or deleted and created again: what
            # runs goes first (over several passes), then the new document gets a compute.
            await self._remove()
            return
        compute = self._compute_for(doc)
        await self._reporter.starting(doc)
        seen = await compute.converge(doc)
        self._busy = seen.busy
        await self._reporter.report(doc, seen)

    def _compute_for(self, doc: OnlineDeploymentDoc) -> DeploymentCompute:
        if self._compute is None:
            if self._created_at not in (None, doc.meta.created_at):
                # A new deployment of the same name: its versions start again at 1.
                self._reporter = Reporter(self.key, self._ctx.store)
            self._kind = doc.spec.kind
            self._compute = self._ctx.backends[doc.spec.kind].deployment(self.key)
        self._created_at = doc.meta.created_at
        return self._compute

    def _recreated(self, doc: OnlineDeploymentDoc) -> bool:
        """`doc` is not the document the compute was built for but a new one of that name."""
        return self._compute is not None and self._created_at not in (None, doc.meta.created_at)

    async def _remove(self) -> None:
        if self._compute is not None:
            seen = await self._compute.remove()
            self._busy = seen.busy
            await self._reporter.instances(seen)
            if seen.instances or seen.busy:
                return
        self._compute, self._kind = None, None
        if await self._ctx.store.deployment(self.key) is None:
            await self._ctx.store.forget_decisions(self.key)
            self.done = True
            log.info("deployment_removed", deployment=self.key)

    async def stop_all(self, reason: str) -> None:
        if self._compute is not None:
            await self._compute.stop_now(reason)


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
        """Wake `key`'s worker; inside a recorded span, its next passes continue that trace."""
        worker = self._workers.get(key)
        if worker is None or worker.done:
            worker = self._spawn(DeploymentWorker(key, self._ctx))
        recording = trace.get_current_span().is_recording()
        worker.wake(otel_context.get_current() if recording else None)

    def _spawn(self, worker: DeploymentWorker) -> DeploymentWorker:
        key = worker.key
        self._workers[key] = worker
        # The worker outlives the call that spawned it: it starts with no trace context
        # (each change's trace reaches it through wake()).
        token = otel_context.attach(otel_context.Context())
        try:
            task = asyncio.create_task(worker.run(), name=f"deployment {key}")
        finally:
            otel_context.detach(token)
        self._tasks[key] = task
        task.add_done_callback(functools.partial(self._forget, key))
        return worker

    def _forget(self, key: str, _task: asyncio.Task[None]) -> None:
        worker = self._workers.get(key)
        if worker is not None and worker.done:
            self._workers.pop(key, None)
            self._tasks.pop(key, None)

    async def touch_endpoint(self, endpoint: str) -> None:
        for key in list(self._workers):
            if key.startswith(endpoint + "/"):
                await self.touch(key)

    async def recover(self) -> None:
        """At start: each backend takes over what a provisioner that died left running (a
        local instance keeps serving: see LocalCompute.recover); those deployments' workers
        start on that backend at once, even if the deployment was deleted meanwhile."""
        for kind, backend in self._ctx.backends.items():
            for key in await backend.recover():
                if key not in self._workers:
                    self._spawn(DeploymentWorker(key, self._ctx, kind)).wake()

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
