"""The reconciler: desired state (MongoDB) -> snapshot -> Envoy's ACK -> `traffic.applied`.

Loop: wait for a change hint (event) or the periodic resync, let a burst of
hints settle (debounce), re-read what changed, build a snapshot, check it,
publish it make-before-break, and report what Envoy did with it.

A NACK must not take other endpoints down with the one that caused it: what
to publish after a NACK (the suspects' last accepted states, a binary search
over several suspects) is `isolation.NackIsolation`; gateway-wide settings
(certificate, token keys) are one more suspect there, under the key "".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import trace

from sluice.common.log import get_logger
from sluice.common.prometheus import RECONCILE_SECONDS
from sluice.traffic.domain import Endpoint, Gateway, Owner, without_host_conflicts
from sluice.traffic.events import Outcomes
from sluice.traffic.isolation import GATEWAY, NackIsolation
from sluice.traffic.jwks import PLACEHOLDER_JWKS, StoredJwks
from sluice.traffic.store import TrafficStore
from sluice.traffic.xds.builder import SnapshotBuilder
from sluice.traffic.xds.server import AdsServer, Outcome, Result
from sluice.traffic.xds.snapshot import CLUSTER, InconsistentSnapshot, Snapshot, short

log = get_logger(__name__)
RETRY_S = 1.0  # after a failed sync (MongoDB away), try again this soon


@dataclass(frozen=True)
class Timing:
    debounce_s: float = 0.02
    resync_s: float = 30.0
    staged_ack_timeout_s: float = 5.0


@dataclass(frozen=True)
class Published:
    """A snapshot and the inputs it was built from."""

    snapshot: Snapshot
    endpoints: Mapping[str, Endpoint]
    gateway: Gateway


class Controller:
    def __init__(
        self,
        *,
        store: TrafficStore,
        server: AdsServer,
        outcomes: Outcomes,
        jwks: StoredJwks,
        gateway: Callable[[str], Gateway],
        timing: Timing = Timing(),
    ):
        self._store = store
        self._server = server
        self._outcomes = outcomes
        self._jwks = jwks
        self._gateway = gateway
        self._timing = timing
        self._builder = SnapshotBuilder()
        self._desired: dict[str, Endpoint] = {}
        self._isolation: NackIsolation[Endpoint | Gateway] = NackIsolation()
        self._dirty: set[str] = set()
        self._dirty_all = True
        self._refresh_jwks = True
        self._wake = asyncio.Event()
        self._conflicts: frozenset[str] = frozenset()
        self._watcher: asyncio.Task[None] | None = None
        self.last_published: Published | None = None
        self._applied_id: str | None = None
        self._traces: list[otel_context.Context] = []  # of traced changes not yet synced

    # ---- inputs ------------------------------------------------------------------------

    def mark_dirty(
        self,
        endpoint: str | None,
        *,
        refresh_jwks: bool = False,
        trace_context: otel_context.Context | None = None,
    ) -> None:
        """Re-read `endpoint` (None: everything) soon; a traced change's trace goes on here."""
        if trace_context is not None:
            self._traces.append(trace_context)
        if endpoint is None:
            self._dirty_all = True
        else:
            self._dirty.add(endpoint)
        self._refresh_jwks = self._refresh_jwks or refresh_jwks
        self._wake.set()

    # ---- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile until cancelled."""
        try:
            while True:
                try:
                    await self.sync_once()
                except InconsistentSnapshot as exc:
                    log.error("snapshot_inconsistent", error=str(exc))
                except Exception:  # a bad read or build must not end the reconciler
                    log.exception("sync_failed")
                    self._dirty_all = True
                    await asyncio.sleep(RETRY_S)
                    self._wake.set()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._timing.resync_s)
                except TimeoutError:
                    self.mark_dirty(None)
                await asyncio.sleep(self._timing.debounce_s)  # let a burst of hints settle
        finally:
            if self._watcher is not None:
                self._watcher.cancel()

    async def sync_once(self) -> None:
        with RECONCILE_SECONDS.labels("traffic").time(), self._traced_sync():
            await self._sync()

    @contextlib.contextmanager
    def _traced_sync(self) -> Iterator[None]:
        """A sync that carries traced changes is a span of the first one's trace (linked to
        the others); the ACK watcher started in it continues it up to `traffic.applied`."""
        traces, self._traces = self._traces, []
        if not traces:
            yield
            return
        links = [trace.Link(trace.get_current_span(c).get_span_context()) for c in traces[1:]]
        tracer = trace.get_tracer("sluice.traffic")
        with tracer.start_as_current_span("traffic: sync", traces[0], links=links):
            yield

    async def _sync(self) -> None:
        self._wake.clear()
        if self._refresh_jwks or self._jwks.current is None:
            self._refresh_jwks = False
            await self._jwks.refresh()
        await self._reload()
        gateway = self._gateway(self._jwks.current or PLACEHOLDER_JWKS)
        chosen, chosen_gateway = self._choose(gateway)
        snapshot = self._builder.build(chosen_gateway, chosen.values())
        current = self._server.snapshot
        if current is not None and current.id == snapshot.id:
            await self._same_config(Published(snapshot, chosen, chosen_gateway))
            return
        snapshot.check()
        await self._publish(Published(snapshot, chosen, chosen_gateway))

    async def _reload(self) -> None:
        if self._dirty_all:
            self._dirty_all = False
            self._dirty.clear()
            self._desired = await self._store.all_endpoints()
            return
        names, self._dirty = self._dirty, set()
        for name in names:
            ep = await self._store.endpoint(name)
            if ep is None:
                self._desired.pop(name, None)
            else:
                self._desired[name] = ep

    def _choose(self, gateway: Gateway) -> tuple[dict[str, Endpoint], Gateway]:
        """What to serve: the desired state, except states Envoy rejected and held suspects."""
        endpoints, conflicts = without_host_conflicts(list(self._desired.values()))
        names = frozenset(c.endpoint for c in conflicts)
        if names != self._conflicts:
            for c in conflicts:
                log.error("endpoint_host_conflict", endpoint=c.endpoint, taken_by=c.taken_by)
            self._conflicts = names
        desired: dict[str, Endpoint | Gateway] = {ep.name: ep for ep in endpoints}
        desired[GATEWAY] = gateway
        chosen = self._isolation.choose(desired)
        chosen_gateway = chosen.pop(GATEWAY, gateway)
        assert isinstance(chosen_gateway, Gateway)
        return {name: ep for name, ep in chosen.items() if isinstance(ep, Endpoint)}, (
            chosen_gateway
        )

    # ---- publishing ---------------------------------------------------------------------

    async def _publish(self, published: Published) -> None:
        snapshot = published.snapshot
        previous = self._server.snapshot
        stale = previous.names(CLUSTER) - snapshot.names(CLUSTER) if previous else frozenset()
        if stale and self._server.streams:
            # Make before break: routes move off the stale clusters before they go.
            staged = snapshot.with_clusters_of(previous, stale) if previous else snapshot
            self._server.set_snapshot(staged)
            result = await self._server.wait_applied(staged, self._timing.staged_ack_timeout_s)
            if result.outcome is Outcome.NACKED:
                await self._on_nack(
                    Published(staged, published.endpoints, published.gateway), result
                )
                return
        if self._watcher is not None:
            self._watcher.cancel()
        self._server.set_snapshot(snapshot)
        self._applied_id = None
        self.last_published = published
        log.info(
            "snapshot_published",
            snapshot=snapshot.id,
            endpoints=len(published.endpoints),
            clusters=len(snapshot.resources[CLUSTER]),
            streams=self._server.streams,
        )
        self._watcher = asyncio.create_task(self._watch(published))

    async def _same_config(self, published: Published) -> None:
        """New endpoint versions that change nothing in Envoy (a description, a tag): they are
        live as soon as the current snapshot is, and `traffic.applied` must say so."""
        last = self.last_published
        if last is None or _versions(last) == _versions(published):
            return
        self.last_published = published
        if self._applied_id == published.snapshot.id:
            await self._on_ack(published)

    async def _watch(self, published: Published) -> None:
        traced = trace.get_current_span().get_span_context().is_valid
        if traced:  # the snapshot of a traced change: how long Envoy took to ACK it
            attributes = {"sluice.snapshot": published.snapshot.id}
            tracer = trace.get_tracer("sluice.traffic")
            with tracer.start_as_current_span("envoy: ACK", attributes=attributes) as span:
                result = await self._server.wait_applied(published.snapshot, None)
                span.set_attribute("sluice.outcome", result.outcome.name)
        else:
            result = await self._server.wait_applied(published.snapshot, None)
        latest = self.last_published or published
        if result.outcome is Outcome.ACKED:
            await self._on_ack(latest if latest.snapshot.id == published.snapshot.id else published)
        elif result.outcome is Outcome.NACKED:
            await self._on_nack(published, result)

    async def _on_ack(self, published: Published) -> None:
        self._applied_id = published.snapshot.id
        released = self._isolation.on_ack(_states(published))
        versions = _versions(published)
        log.info("snapshot_applied", snapshot=published.snapshot.id, endpoints=len(versions))
        with contextlib.suppress(Exception):
            await self._outcomes.applied(
                published.snapshot.id, versions, routed(published), owners(published)
            )
        if released:
            self._wake.set()  # the held suspects get their turn

    async def _on_nack(self, published: Published, result: Result) -> None:
        rejection = result.rejection
        assert rejection is not None
        suspects = self._isolation.on_nack(_states(published))
        log.error(
            "snapshot_rejected",
            snapshot=published.snapshot.id,
            type=short(rejection.type_url),
            node=rejection.node,
            error=rejection.error,
            suspects=suspects,
        )
        versions = {n: published.endpoints[n].version for n in suspects if n != GATEWAY}
        with contextlib.suppress(Exception):
            await self._outcomes.rejected(
                published.snapshot.id, short(rejection.type_url), rejection.error, versions
            )
        self._wake.set()


def routed(published: Published) -> dict[str, list[str]]:
    """`endpoint/deployment` -> the instance addresses Envoy balances over: what the
    provisioner waits for before it stops an instance (make before break)."""
    return {
        f"{ep.name}/{dep.name}": [u.address for u in dep.instances]
        for ep in published.endpoints.values()
        for dep in ep.deployments
    }


def owners(published: Published) -> dict[str, Owner]:
    """Envoy's cluster name -> the deployment it serves, as its metadata says."""
    return {
        dep.cluster: Owner(endpoint=dep.endpoint, deployment=dep.name)
        for ep in published.endpoints.values()
        for dep in ep.deployments
    }


def _states(published: Published) -> dict[str, Endpoint | Gateway]:
    return {**published.endpoints, GATEWAY: published.gateway}


def _versions(published: Published) -> dict[str, int]:
    return {name: ep.version for name, ep in published.endpoints.items()}
