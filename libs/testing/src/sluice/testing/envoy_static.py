"""A snapshot as one static Envoy bootstrap: for `envoy --mode validate` and for reading.

EDS clusters get their load assignment inline, listeners their route table and
HTTP filter configurations (ECDS) inline, secrets go to `static_resources.secrets`,
so Envoy can check the whole configuration without an xDS server.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from google.protobuf import json_format

from sluice.common.components import (
    ACCESS_LOG_CLUSTER,
    ENVOY_BOOTSTRAP,
    find_project_file,
    render_envoy_bootstrap,
)
from sluice.common.pki import Identity
from sluice.traffic.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    EXTENSION,
    LISTENER,
    ROUTE,
    SECRET,
    Snapshot,
)


def _unpack(packed: Any, message: Any) -> Any:
    packed.Unpack(message)
    return message


def resources_json(snapshot: Snapshot) -> dict[str, Any]:
    """Every resource as Envoy's JSON, by type and name (what golden files hold)."""
    return {
        type_url.rsplit(".", 1)[-1]: {
            name: json_format.MessageToDict(packed) for name, packed in items.items()
        }
        for type_url, items in snapshot.resources.items()
    }


def platform_statics(envoy: Identity) -> tuple[list[Any], list[Any]]:
    """(clusters, secrets) that deploy/envoy/bootstrap.yaml gives Envoy and snapshots name:
    the access log's cluster (Envoy's fluentd logger writes only to a bootstrap cluster),
    Envoy's client certificate and the platform CA."""
    config = render_envoy_bootstrap(
        find_project_file(ENVOY_BOOTSTRAP),
        xds_host="127.0.0.1",
        xds_port=1,
        node_id="sluice-gateway",
        tls=envoy,
        access_log=("127.0.0.1", 9),
    )
    statics = config["static_resources"]
    clusters = [c for c in statics["clusters"] if c["name"] == ACCESS_LOG_CLUSTER]
    return clusters, statics["secrets"]


def static_bootstrap(
    snapshot: Snapshot, *, admin_port: int = 0, envoy: Identity | None = None
) -> dict[str, Any]:
    """`envoy`: Envoy's platform identity, needed when the snapshot logs requests."""
    routes = {
        name: _unpack(p, route_pb2.RouteConfiguration())
        for name, p in snapshot.resources[ROUTE].items()
    }
    assignments = {
        name: _unpack(p, endpoint_pb2.ClusterLoadAssignment())
        for name, p in snapshot.resources[ENDPOINT].items()
    }
    filters = {
        name: _unpack(p, extension_pb2.TypedExtensionConfig()).typed_config
        for name, p in snapshot.resources[EXTENSION].items()
    }
    clusters = []
    for packed in snapshot.resources[CLUSTER].values():
        cluster = _unpack(packed, cluster_pb2.Cluster())
        if cluster.type == cluster_pb2.Cluster.EDS:
            cluster.type = cluster_pb2.Cluster.STATIC
            cluster.ClearField("eds_cluster_config")
            cluster.load_assignment.CopyFrom(assignments[cluster.name])
        clusters.append(json_format.MessageToDict(cluster))
    listeners = []
    for packed in snapshot.resources[LISTENER].values():
        listener = _unpack(packed, listener_pb2.Listener())
        for chain in listener.filter_chains:
            for f in chain.filters:
                hcm = hcm_pb2.HttpConnectionManager()
                if f.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                    table = routes[hcm.rds.route_config_name]
                    hcm.ClearField("rds")
                    hcm.route_config.CopyFrom(table)
                    for http_filter in hcm.http_filters:
                        if http_filter.HasField("config_discovery"):
                            http_filter.typed_config.CopyFrom(filters[http_filter.name])
                    f.typed_config.Pack(hcm)
            if chain.HasField("transport_socket"):
                tls = tls_pb2.DownstreamTlsContext()
                chain.transport_socket.typed_config.Unpack(tls)
                for sds in tls.common_tls_context.tls_certificate_sds_secret_configs:
                    sds.ClearField("sds_config")
                chain.transport_socket.typed_config.Pack(tls)
        listeners.append(json_format.MessageToDict(listener))
    secrets = [
        json_format.MessageToDict(_unpack(p, secret_pb2.Secret()))
        for p in snapshot.resources[SECRET].values()
    ]
    if envoy is not None:
        more_clusters, more_secrets = platform_statics(envoy)
        clusters += more_clusters
        secrets += more_secrets
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {"listeners": listeners, "clusters": clusters, "secrets": secrets},
    }
