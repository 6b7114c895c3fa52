"""An immutable, versioned set of Envoy resources, checked before it is published.

Versions are content hashes per resource type, so an unchanged type is never
re-sent and the same content always has the same version (across restarts of
the controller too). `check()` is go-control-plane's `Consistent()`: every
cluster a route names exists, every EDS cluster has a load assignment, every
route table and secret a listener names exists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import any_pb2

PREFIX = "type.googleapis.com/"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
EXTENSION = PREFIX + "envoy.config.core.v3.TypedExtensionConfig"  # ECDS: the router's

# Make before break: what a listener or route names must already be there (the router's
# mirror log before the routes that mirror).
PUSH_PHASES: tuple[tuple[str, ...], ...] = (
    (SECRET, CLUSTER, ENDPOINT, EXTENSION),
    (LISTENER, ROUTE),
)
ALL_TYPES = tuple(t for phase in PUSH_PHASES for t in phase)
# Envoy subscribes to these with no names (all of them); the others by name.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})


def short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


class InconsistentSnapshot(ValueError):
    pass


@dataclass(frozen=True)
class Snapshot:
    resources: Mapping[str, Mapping[str, any_pb2.Any]]  # type url -> name -> packed resource
    versions: Mapping[str, str]  # type url -> content hash
    # Route table name -> the clusters its routes name, as its builder read them off the
    # routes it serialized: the check then need not parse the table (6 MB and 16,000 routes
    # at 1,000 endpoints). A table without an entry is parsed.
    route_clusters: Mapping[str, frozenset[str]]

    @classmethod
    def build(
        cls,
        resources: Mapping[str, Iterable[tuple[str, any_pb2.Any]]],
        route_clusters: Mapping[str, frozenset[str]] | None = None,
    ) -> Snapshot:
        by_type: dict[str, Mapping[str, any_pb2.Any]] = {}
        versions: dict[str, str] = {}
        for type_url in ALL_TYPES:
            items = dict(sorted(resources.get(type_url, ())))
            by_type[type_url] = MappingProxyType(items)
            versions[type_url] = _content_hash(items)
        return cls(
            resources=MappingProxyType(by_type),
            versions=MappingProxyType(versions),
            route_clusters=MappingProxyType(dict(route_clusters or {})),
        )

    @property
    def id(self) -> str:
        """One name for the whole snapshot: the hash of its type versions."""
        digest = hashlib.sha256("".join(self.versions[t] for t in ALL_TYPES).encode())
        return digest.hexdigest()[:16]

    def names(self, type_url: str) -> frozenset[str]:
        return frozenset(self.resources[type_url])

    def with_clusters_of(self, other: Snapshot, names: Iterable[str]) -> Snapshot:
        """This snapshot plus `names`' clusters and load assignments from `other`: the
        intermediate step that keeps clusters alive until no route names them."""
        extra = {CLUSTER: dict(self.resources[CLUSTER]), ENDPOINT: dict(self.resources[ENDPOINT])}
        for name in names:
            if name in other.resources[CLUSTER]:
                extra[CLUSTER][name] = other.resources[CLUSTER][name]
            if name in other.resources[ENDPOINT]:
                extra[ENDPOINT][name] = other.resources[ENDPOINT][name]
        merged = {t: list(self.resources[t].items()) for t in ALL_TYPES}
        merged.update({t: list(v.items()) for t, v in extra.items()})
        return Snapshot.build(merged, self.route_clusters)

    def check(self) -> None:
        """Raise InconsistentSnapshot unless every reference resolves."""
        clusters = set(self.resources[CLUSTER])
        # Only a cluster without a load assignment can lack one: the others stay packed (with
        # 1,000s of endpoints, unpacking every cluster was most of the check).
        missing_eds = []
        for name in sorted(clusters - set(self.resources[ENDPOINT])):
            cluster = cluster_pb2.Cluster()
            self.resources[CLUSTER][name].Unpack(cluster)
            if cluster.type == cluster_pb2.Cluster.EDS:
                missing_eds.append(name)
        if missing_eds:
            raise InconsistentSnapshot(f"EDS clusters without load assignment: {missing_eds}")
        orphans = sorted(set(self.resources[ENDPOINT]) - clusters)
        if orphans:
            raise InconsistentSnapshot(f"load assignments without cluster: {orphans}")
        for name, packed in self.resources[ROUTE].items():
            named = self.route_clusters.get(name)
            if named is None:
                table = route_pb2.RouteConfiguration()
                packed.Unpack(table)
                named = referenced_clusters(
                    r for vhost in table.virtual_hosts for r in vhost.routes
                )
            unknown = sorted(named - clusters)
            if unknown:
                raise InconsistentSnapshot(f"routes of {name} name unknown clusters {unknown}")
        for packed in self.resources[LISTENER].values():
            listener = listener_pb2.Listener()
            packed.Unpack(listener)
            routes, secrets, extensions = _listener_references(listener)
            if not routes <= set(self.resources[ROUTE]):
                raise InconsistentSnapshot(f"listener {listener.name} names unknown routes")
            if not secrets <= set(self.resources[SECRET]):
                raise InconsistentSnapshot(f"listener {listener.name} names unknown secrets")
            if not extensions <= set(self.resources[EXTENSION]):
                raise InconsistentSnapshot(f"listener {listener.name} names unknown filters")


def referenced_clusters(routes: Iterable[route_components_pb2.Route]) -> frozenset[str]:
    """The clusters `routes` send to: their clusters, weighted clusters and mirrors."""
    names: set[str] = set()
    for route in routes:
        if not route.HasField("route"):
            continue
        action = route.route
        if action.cluster:
            names.add(action.cluster)
        names.update(w.name for w in action.weighted_clusters.clusters)
        names.update(m.cluster for m in action.request_mirror_policies)
    return frozenset(names)


def _listener_references(listener: listener_pb2.Listener) -> tuple[set[str], set[str], set[str]]:
    """(route tables, secrets, HTTP filter configurations (ECDS)) the listener names."""
    routes: set[str] = set()
    secrets: set[str] = set()
    extensions: set[str] = set()
    for chain in listener.filter_chains:
        for f in chain.filters:
            hcm = hcm_pb2.HttpConnectionManager()
            if f.typed_config.Unpack(hcm):
                if hcm.HasField("rds"):
                    routes.add(hcm.rds.route_config_name)
                extensions.update(
                    h.name for h in hcm.http_filters if h.HasField("config_discovery")
                )
        if chain.HasField("transport_socket"):
            tls = tls_pb2.DownstreamTlsContext()
            if chain.transport_socket.typed_config.Unpack(tls):
                secrets.update(
                    s.name for s in tls.common_tls_context.tls_certificate_sds_secret_configs
                )
    return routes, secrets, extensions


def _content_hash(items: Mapping[str, any_pb2.Any]) -> str:
    digest = hashlib.sha256()
    for name, packed in items.items():
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(hashlib.sha256(packed.value).digest())
    return digest.hexdigest()[:16]
