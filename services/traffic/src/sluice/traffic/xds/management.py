"""The management listener: the control plane's gRPC API as REST, and the portal.

REST is not a second implementation: Envoy's gRPC-JSON transcoder turns
`PUT /onlineEndpoints/x` into the `sluice.v1.Workspace/PutOnlineEndpoint` call its
`google.api.http` rule names (proto/sluice/v1/*.proto; the descriptor set is generated
by `make proto`), and the answer (or the gRPC status) back into JSON: the registry's
resources in Azure Resource Manager's shape (workspace.proto).
The `Authorization: Bearer <admin token>` header travels as gRPC metadata, so the
services' own admin-token check is the REST API's too. Routes are chosen on the
transcoded path (`/sluice.v1.Registry/...`), so the same listener also proxies
plain gRPC. The transcoder maps gRPC codes to HTTP as Google's APIs do
(INVALID_ARGUMENT 400, UNAUTHENTICATED 401, NOT_FOUND 404, ALREADY_EXISTS 409, ...);
a Lua filter then turns ABORTED (a write conditional on a stale `If-Match` ETag)
into 412 Precondition Failed, which is what Azure answers, and a PUT that created its
resource into 201 Created.

Off loopback the listener speaks TLS with the gateway's certificate.
The portal's files, the OpenAPI document and a redirect from `/` are direct
responses; `/gateway/...` forwards to the plain-HTTP scoring listener, so the
portal's Test tab calls an endpoint exactly as any client does, from the same
origin.
"""

from __future__ import annotations

import ipaddress

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    protocol_pb2,
    substitution_format_string_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import duration_pb2, struct_pb2, wrappers_pb2

from sluice.common.artifacts import REST_UPLOAD_MAX_BYTES
from sluice.common.settings import is_loopback
from sluice.traffic.domain import Management
from sluice.traffic.xds.resources import gateway_tls, pack

LISTENER = "sluice_management"
GATEWAY_CLUSTER = "sluice_management_gateway"
PORTAL_PREFIX = "/portal/"
OPENAPI_PATH = "/openapi.json"

# On the way in, Azure Resource Manager's workspace scope in front of a path is taken off
# (`/subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.MachineLearningServices/
# workspaces/<w>/onlineEndpoints/e` is `/onlineEndpoints/e`, whatever <s>, <rg> and <w>;
# ARM paths are case-insensitive), so a call copied from Azure's REST docs and a resource's
# own `id` reach the transcoder's rules. An empty part is not read: the listener merges
# slashes first, so `resourceGroups//providers` no longer names a resource group.
# Azure's operation status URIs are subscription-scoped
# (`/subscriptions/<s>/providers/Microsoft.MachineLearningServices/locations/...`): that
# prefix is taken off too. The services are told the scheme and host the client called
# (`x-sluice-base`, whatever the client sent in it), for the absolute URIs Azure answers
# (an operation's `Azure-AsyncOperation`).
# On the way out, a PUT that created its resource says so in a header
# (sluice.registry.workspace_api): Azure's 201 Created. ABORTED (10) is a stale If-Match
# ETag: HTTP's 412, not the transcoder's 409.
STATUS_LUA = """\
local ARM_SCOPE = "^/subscriptions/[^/?]+/resourcegroups/[^/?]+/providers/"
  .. "microsoft%.machinelearningservices/workspaces/[^/?]+/"

local ARM_LOCATIONS = "^/subscriptions/[^/?]+/providers/"
  .. "microsoft%.machinelearningservices/locations/"

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove("x-sluice-base")
  local path = headers:get(":path")
  if path == nil then
    return
  end
  local host = headers:get(":authority")
  if host ~= nil and string.sub(path, 1, 9) ~= "/gateway/" then
    headers:add("x-sluice-base", (headers:get(":scheme") or "http") .. "://" .. host)
  end
  local lower = string.lower(path)
  local _, last = string.find(lower, ARM_SCOPE)
  if last == nil then
    _, last = string.find(lower, ARM_LOCATIONS)
    if last ~= nil then
      last = last - string.len("locations/")  -- keep "/locations/..."
    end
  end
  if last ~= nil then
    headers:replace(":path", string.sub(path, last))
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  if headers:get("x-sluice-created") ~= nil then
    headers:remove("x-sluice-created")
    if headers:get(":status") == "200" then
      headers:replace(":status", "201")
    end
    return
  end
  if headers:get(":status") ~= "409" then
    return
  end
  -- body() waits for the whole body: the header map must be fetched again after it.
  local body = handle:body()
  if body ~= nil and string.find(body:getBytes(0, body:length()), '"code":10[,}]') then
    handle:headers():replace(":status", "412")
  end
end
"""


def _s(seconds: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds)


def service_cluster(address: str) -> str:
    return "sluice_api_" + address.replace(":", "_").replace(".", "_").strip("[]")


def _address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def upstream_cluster(name: str, host: str, port: int, *, http2: bool) -> cluster_pb2.Cluster:
    explicit = http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
        http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
    )
    if not http2:
        explicit = http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http_protocol_options=protocol_pb2.Http1ProtocolOptions()
        )
    try:
        ipaddress.ip_address(host)
        kind = cluster_pb2.Cluster.STATIC
    except ValueError:
        kind = cluster_pb2.Cluster.STRICT_DNS  # compose/Kubernetes: a service name
    return cluster_pb2.Cluster(
        name=name,
        type=kind,
        connect_timeout=_s(1),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=_address(host, port))
                        )
                    ]
                )
            ],
        ),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": pack(
                http_protocol_options_pb2.HttpProtocolOptions(explicit_http_config=explicit)
            )
        },
    )


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def clusters(m: Management) -> list[cluster_pb2.Cluster]:
    """One HTTP/2 cluster per service process, and one to the scoring listener."""
    addresses = sorted({address for _, address in m.services})
    result = [
        upstream_cluster(service_cluster(a), *split_address(a), http2=True) for a in addresses
    ]
    if m.gateway is not None:
        result.append(
            upstream_cluster(GATEWAY_CLUSTER, m.gateway.host, m.gateway.port, http2=False)
        )
    return result


def _direct(path: str, content_type: str, body: bytes) -> route_components_pb2.Route:
    return route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(path=path),
        direct_response=route_components_pb2.DirectResponseAction(
            status=200, body=base_pb2.DataSource(inline_bytes=body)
        ),
        response_headers_to_add=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="content-type", value=content_type),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            ),
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="cache-control", value="no-cache"),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            ),
        ],
    )


def routes(m: Management) -> route_pb2.RouteConfiguration:
    table: list[route_components_pb2.Route] = []
    for service, address in sorted(m.services):
        table.append(
            route_components_pb2.Route(
                match=route_components_pb2.RouteMatch(prefix=f"/{service}/"),
                # Streams (a followed job log) may last; unary calls end on their own.
                route=route_components_pb2.RouteAction(
                    cluster=service_cluster(address), timeout=_s(0)
                ),
            )
        )
    if m.gateway is not None:
        table.append(
            route_components_pb2.Route(
                match=route_components_pb2.RouteMatch(prefix="/gateway/"),
                route=route_components_pb2.RouteAction(
                    cluster=GATEWAY_CLUSTER, prefix_rewrite="/", timeout=_s(300)
                ),
            )
        )
    table.append(_direct(OPENAPI_PATH, "application/json", m.openapi))
    for f in m.files:
        table.append(_direct(f.path, f.content_type, f.body))
    table.append(
        route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(path="/"),
            redirect=route_components_pb2.RedirectAction(path_redirect=PORTAL_PREFIX),
        )
    )
    table.append(
        route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix="/"),
            direct_response=route_components_pb2.DirectResponseAction(
                status=404,
                body=base_pb2.DataSource(
                    inline_string='{"code":5,"message":"no such REST path (see /openapi.json)"}'
                ),
            ),
            response_headers_to_add=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key="content-type", value="application/json"),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            ],
        )
    )
    biggest = max([len(m.openapi), *(len(f.body) for f in m.files)])
    return route_pb2.RouteConfiguration(
        name=LISTENER,
        virtual_hosts=[
            route_components_pb2.VirtualHost(name=LISTENER, domains=["*"], routes=table)
        ],
        max_direct_response_body_size_bytes=wrappers_pb2.UInt32Value(value=biggest + 1),
    )


def _filters(m: Management) -> list[hcm_pb2.HttpFilter]:
    transcoder = transcoder_pb2.GrpcJsonTranscoder(
        proto_descriptor_bin=m.descriptor_set,
        services=sorted(service for service, _ in m.services),
        print_options=transcoder_pb2.GrpcJsonTranscoder.PrintOptions(
            always_print_primitive_fields=True
        ),
        convert_grpc_status=True,
        case_insensitive_enum_parsing=True,
        # Azure's REST calls all carry ?api-version= (and lists $top, $orderBy, $skip...):
        # a query parameter that maps to no field is ignored, as ARM does, not a 404.
        ignore_unknown_query_parameters=True,
        # PUT /artifacts/{name} carries a whole tar archive (larger bodies: 413).
        max_request_body_size=wrappers_pb2.UInt32Value(value=REST_UPLOAD_MAX_BYTES),
    )
    lua = lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=STATUS_LUA))
    return [
        # On the way back filters run in reverse: Lua sees the transcoded JSON status.
        hcm_pb2.HttpFilter(name="envoy.filters.http.lua", typed_config=pack(lua)),
        hcm_pb2.HttpFilter(
            name="envoy.filters.http.grpc_json_transcoder", typed_config=pack(transcoder)
        ),
        hcm_pb2.HttpFilter(
            name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())
        ),
    ]


def _status_as_json(status: int, code: int) -> hcm_pb2.ResponseMapper:
    """Envoy's own reply with `status` (a request the transcoder cannot read, a service
    that is down) as the same JSON as the services' errors: {"code", "message"}."""
    body = struct_pb2.Struct(
        fields={
            "code": struct_pb2.Value(number_value=code),
            "message": struct_pb2.Value(string_value="%LOCAL_REPLY_BODY%"),
        }
    )
    return hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(
            status_code_filter=accesslog_pb2.StatusCodeFilter(
                comparison=accesslog_pb2.ComparisonFilter(
                    op=accesslog_pb2.ComparisonFilter.EQ,
                    value=base_pb2.RuntimeUInt32(default_value=status, runtime_key="sluice.unused"),
                )
            )
        ),
        body_format_override=substitution_format_string_pb2.SubstitutionFormatString(
            json_format=body, content_type="application/json"
        ),
    )


# HTTP status of Envoy's own replies -> the gRPC code the JSON body carries. Only these:
# the portal's files are direct responses too (200), and the unknown-path 404 is JSON already.
LOCAL_REPLY_CODES = {400: 3, 413: 8, 503: 14, 504: 4}


def listener(m: Management) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=LISTENER,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        route_config=routes(m),
        http_filters=_filters(m),
        local_reply_config=hcm_pb2.LocalReplyConfig(
            mappers=[_status_as_json(s, c) for s, c in LOCAL_REPLY_CODES.items()]
        ),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
    )
    chain = listener_components_pb2.FilterChain(
        filters=[
            listener_components_pb2.Filter(
                name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
            )
        ]
    )
    # Only this machine reaches a loopback listener: plain HTTP is enough (the local
    # platform). Anywhere else (compose, Kubernetes: 0.0.0.0) the admin token and the
    # endpoints' keys cross a network, so it speaks TLS, as the scoring listener does.
    if not is_loopback(m.listen.host):
        chain.transport_socket.CopyFrom(gateway_tls())
    return listener_pb2.Listener(
        name=LISTENER, address=_address(m.listen.host, m.listen.port), filter_chains=[chain]
    )
