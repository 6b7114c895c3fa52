"""Builds snapshots from domain values, reusing each endpoint's resources while it is unchanged.

An endpoint's resources (clusters, load assignments, virtual host, path
routes) depend only on its `Endpoint` value and the domain, so they are
built and packed once per distinct value; with 1,000 endpoints a change to
one rebuilds one.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from google.protobuf import any_pb2

from sluice.traffic.domain import Endpoint, Gateway
from sluice.traffic.xds import management
from sluice.traffic.xds import resources as r
from sluice.traffic.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    EXTENSION,
    LISTENER,
    ROUTE,
    SECRET,
    Snapshot,
)


@dataclass(frozen=True)
class EndpointResources:
    clusters: tuple[tuple[str, any_pb2.Any], ...]
    assignments: tuple[tuple[str, any_pb2.Any], ...]
    routes: r.RoutePiece


def endpoint_resources(ep: Endpoint, domain: str) -> EndpointResources:
    return EndpointResources(
        clusters=tuple((d.cluster, r.pack(r.deployment_cluster(d))) for d in ep.deployments),
        assignments=tuple((d.cluster, r.pack(r.load_assignment(d))) for d in ep.deployments),
        routes=r.route_piece(ep, domain),
    )


# After the last mirror goes, the router's mirror log stays this long past the longest request
# timeout of the deployments that received copies: copies still in flight are logged. The
# controller's periodic resync (every 30 s) builds again afterwards and drops it.
MIRROR_LOG_MARGIN_S = 1.0


class SnapshotBuilder:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._cache: dict[tuple[Endpoint, str], EndpointResources] = {}
        self._gateway: tuple[Gateway, dict[str, list[tuple[str, any_pb2.Any]]]] | None = None
        self._clock = clock
        self._mirror_log_until = float("-inf")  # keep the mirror log until then

    def build(self, gateway: Gateway, endpoints: Iterable[Endpoint]) -> Snapshot:
        eps = sorted(endpoints, key=lambda e: e.name)
        parts = [self._endpoint(ep, gateway.domain) for ep in eps]
        self._cache = {(ep, gateway.domain): part for ep, part in zip(eps, parts, strict=True)}
        base = self._gateway_resources(gateway)
        resources: dict[str, list[tuple[str, any_pb2.Any]]] = {
            CLUSTER: [c for p in parts for c in p.clusters] + base[CLUSTER],
            ENDPOINT: [a for p in parts for a in p.assignments],
            LISTENER: base[LISTENER],
            ROUTE: [
                (
                    r.ROUTE_CONFIG,
                    r.route_configuration((p.routes for p in parts), gateway.batch_jobs),
                )
            ],
            SECRET: base[SECRET],
            EXTENSION: [self._router(gateway, self._mirror_log(eps))],
        }
        routes = [p.routes for p in parts]
        clusters = r.route_clusters(routes, gateway.batch_jobs)
        return Snapshot.build(resources, {r.ROUTE_CONFIG: clusters})

    def _mirror_log(self, endpoints: list[Endpoint]) -> bool:
        """Whether the router logs mirrored copies: while an endpoint mirrors, and until the
        copies it sent last may still be answered."""
        now = self._clock()
        for ep in endpoints:
            if ep.mirror is None:
                continue
            target = ep.deployment(ep.mirror.deployment)
            timeout_s = target.request_timeout_ms / 1000 if target is not None else 0.0
            until = now + timeout_s + MIRROR_LOG_MARGIN_S
            self._mirror_log_until = max(self._mirror_log_until, until)
        return now < self._mirror_log_until

    @staticmethod
    @functools.lru_cache(maxsize=4)
    def _router(gateway: Gateway, mirrors: bool) -> tuple[str, any_pb2.Any]:
        return r.ROUTER_CONFIG, r.pack(r.router_config(gateway, mirrors))

    def _endpoint(self, ep: Endpoint, domain: str) -> EndpointResources:
        cached = self._cache.get((ep, domain))
        return cached if cached is not None else endpoint_resources(ep, domain)

    def _gateway_resources(self, gateway: Gateway) -> Mapping[str, list[tuple[str, any_pb2.Any]]]:
        if self._gateway is not None and self._gateway[0] == gateway:
            return self._gateway[1]
        built: dict[str, list[tuple[str, any_pb2.Any]]] = {
            CLUSTER: [],
            LISTENER: [(lst.name, r.pack(lst)) for lst in r.listeners(gateway)],
            SECRET: [(r.TLS_SECRET, r.pack(r.tls_secret(gateway)))],
        }
        if gateway.batch_jobs is not None:
            cluster = management.upstream_cluster(
                r.BATCH_JOBS_CLUSTER,
                *management.split_address(gateway.batch_jobs.address),
                http2=True,
            )
            built[CLUSTER].append((cluster.name, r.pack(cluster)))
        if gateway.management is not None:
            built[CLUSTER] += [(c.name, r.pack(c)) for c in management.clusters(gateway.management)]
            built[LISTENER].append(
                (management.LISTENER, r.pack(management.listener(gateway.management)))
            )
        self._gateway = (gateway, built)
        return built
