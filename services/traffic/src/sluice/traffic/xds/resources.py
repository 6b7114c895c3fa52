"""Envoy resources for the gateway, built from the domain values.

One endpoint becomes: a cluster (EDS) and a load assignment per deployment,
a virtual host for `<endpoint>.<domain>`, and routes under
`/endpoints/<endpoint>/` in the catch-all virtual host. Routes in order:
one per deployment matching the `azureml-model-deployment` header (works at
0% traffic, never mirrored), a 404 for any other value of that header, then
the weighted split (with the mirror policy) or a 404 when no deployment has
traffic.

The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`) has
the same routes, first in the endpoint's virtual host (gRPC clients cannot
add a path prefix, so only host-based), matching gRPC requests to that
service: Envoy's gRPC HTTP/1.1 reverse bridge sends each call over the
deployment's one (HTTP/1.1) cluster to the inference server (grpc_bridge.py).
Same auth, split, mirror, pin header and timeouts; Envoy's own replies (401,
404, 429, 503) reach gRPC clients as their gRPC status (UNAUTHENTICATED,
UNIMPLEMENTED, UNAVAILABLE).

Auth runs in Envoy before any upstream is touched. Key endpoints: the RBAC
filter, per route, allows `Authorization: Bearer <primary|secondary>`, compared
as SHA-256 hashes that a Lua filter before it computes (key_hash.py: the keys
themselves never go over xDS). We use
RBAC rather than `api_key_auth` because Envoy 1.40 marks `api_key_auth`
work-in-progress and outside its threat model, while RBAC is stable and
hardened; RBAC's 403 is turned into Azure's 401 by the local reply mapper.
A regenerated key is a route-table change only (RDS), so it takes effect in
one push without touching listeners or connections. Token endpoints:
`jwt_authn` checks signature, issuer and expiry against the registry's JWKS
(inline in the listener, pushed over xDS), writes the payload to metadata,
and the per-route RBAC policy requires the endpoint's audience. The
credential is removed before the request goes upstream, and no access log
records it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import (
    address_pb2,
    backoff_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    health_check_pb2,
    protocol_pb2,
    substitution_format_string_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.fluentd.v3 import fluentd_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import metadata_pb2, regex_pb2, string_pb2, value_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2
from google.protobuf.message import Message

from sluice.common import access_log
from sluice.common.components import ACCESS_LOG_CLUSTER
from sluice.common.gateway_auth import HEADER
from sluice.common.headers import MODEL_STATUS_HEADER, NOT_PROCESSED_HEADER
from sluice.common.resources import TOKEN_ISSUER
from sluice.traffic.domain import (
    DEPLOYMENT_HEADER,
    GRPC_SERVICE_PREFIX,
    PATH_PREFIX,
    BatchJobs,
    Deployment,
    Endpoint,
    Gateway,
    KeyAuth,
    Limits,
    Listen,
    TokenAuth,
)
from sluice.traffic.xds import grpc_bridge, key_hash
from sluice.traffic.xds.snapshot import referenced_clusters

ROUTE_CONFIG = "sluice_routes"
TLS_SECRET = "sluice_tls"  # noqa: S105 - the name of an SDS resource, not a secret
JWT_FILTER = "envoy.filters.http.jwt_authn"
RBAC_FILTER = "envoy.filters.http.rbac"
LUA_FILTER = "envoy.filters.http.lua"
TRANSCODER_FILTER = "envoy.filters.http.grpc_json_transcoder"
BATCH_JOBS_CLUSTER = "sluice_batch_jobs"
BATCH_SERVICE = "sluice.v1.Batch"
# The host a `POST /jobs` came to, for the batch service to name its endpoint by
# (sluice.batch.scoring_uri.HOST_HEADER); always the gateway's, never the client's.
ENDPOINT_HOST_HEADER = "x-sluice-endpoint-host"
JWT_PROVIDER = "sluice"
JWT_REQUIREMENT = "endpoint-token"
JWT_PAYLOAD_KEY = "jwt_payload"
CATCH_ALL_VHOST = "sluice_catch_all"
ROUTER_CONFIG = "sluice_router"  # the router filter's configuration (ECDS)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
# Attribution for the metrics service: every cluster, instance (EDS host) and endpoint route
# carries `filter_metadata["sluice"] = {endpoint, deployment}` (routes: endpoint), and the
# access log's record copies the host's and the route's (sluice.common.access_log), so records
# name their deployment without parsing names.
METADATA_NAMESPACE = access_log.METADATA_NAMESPACE
# Envoy logs a mirrored copy only through the router's upstream log, which also sees every
# primary attempt; this header, set on the copies alone, selects them.
MIRROR_HEADER = "x-sluice-mirror"

# Azure's gateway answers a model's non-2xx with 424 and passes the model's status on in
# headers (SPEC "Invocation"). Only upstream answers carry x-envoy-upstream-service-time,
# so Envoy's own replies (401, 404, 408, 429, 503) are left alone; so are the inference
# server's own refusals with codes that mean the same at the gateway (408 timeout, 413 too
# large, 429 too busy, 503 not ready). A status run() chose carries the server's mark
# (MODEL_STATUS_HEADER), so a model's own 429 or 503 is a model error too; the mark is
# removed.
MODEL_ERROR_LUA = f"""\
local reasons = {{[400] = "Bad Request", [404] = "Not Found", [405] = "Method Not Allowed",
  [408] = "Request Timeout", [413] = "Payload Too Large", [429] = "Too Many Requests",
  [500] = "Internal Server Error", [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout"}}
local passed = {{[408] = true, [413] = true, [429] = true, [503] = true}}
function envoy_on_response(handle)
  local headers = handle:headers()
  if headers:get("x-envoy-upstream-service-time") == nil then return end
  local status = headers:get(":status")
  local code = tonumber(status)
  if code == nil or (code >= 200 and code < 300) then return end
  local chosen = headers:get("{MODEL_STATUS_HEADER}") ~= nil
  if chosen then headers:remove("{MODEL_STATUS_HEADER}") elseif passed[code] then return end
  headers:replace("ms-azureml-model-error-statuscode", status)
  headers:replace("ms-azureml-model-error-reason", reasons[code] or "Model Error")
  headers:replace(":status", "424")
end
"""


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)  # stable bytes: versions are content hashes
    return packed


def _ms(milliseconds: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(milliseconds)
    return d


def _s(seconds: float) -> duration_pb2.Duration:
    return _ms(int(seconds * 1000))


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


# `azureml-model-deployment` on answers: the deployment of the instance that answered, read
# from the instance's (EDS host) metadata. Envoy's own replies (401, 404, 429, 503) have no
# upstream host, so the value is empty and Envoy leaves the header out: a caller that has not
# proved who it is learns no deployment name. Set once for the whole route table (a formatter
# per route was 16 per endpoint for Envoy to parse).
SERVED_BY = base_pb2.HeaderValueOption(
    header=base_pb2.HeaderValue(
        key=DEPLOYMENT_HEADER, value=f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:deployment)%"
    ),
    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    keep_empty_value=False,
)


def _socket(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


@functools.lru_cache(maxsize=4096)  # an endpoint's routes and clusters repeat theirs
def _metadata(**fields: str) -> base_pb2.Metadata:
    """`filter_metadata["sluice"]`; shared (setting a field from it copies it): never modify
    the returned message."""
    values = {k: struct_pb2.Value(string_value=v) for k, v in fields.items()}
    return base_pb2.Metadata(filter_metadata={METADATA_NAMESPACE: struct_pb2.Struct(fields=values)})


# ---- clusters and endpoints ----------------------------------------------------------


PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _gateway_header(dep: Deployment) -> any_pb2.Any:
    """The upstream filter that adds the deployment's gateway secret, which its instances
    require (sluice.common.gateway_auth): on the way to its instances only, so pinned,
    split and mirrored requests alike carry it."""
    mutation = header_mutation_pb2.HeaderMutation(
        mutations=header_mutation_pb2.Mutations(
            request_mutations=[
                mutation_rules_pb2.HeaderMutation(append=_header(HEADER, dep.gateway_secret))
            ]
            if dep.gateway_secret
            else [],
        )
    )
    return pack(mutation)


@functools.cache
def _cluster_template() -> cluster_pb2.Cluster:
    """Everything a deployment's cluster has in common with every other one: an EDS cluster,
    least-request balancing, active health checks on the inference server's /ready, and
    outlier detection that ejects instances failing at the connection level (not on model
    500s).

    Built once; `deployment_cluster` copies it and sets what is the deployment's own (with
    1,000s of deployments, building each cluster field by field was most of a snapshot's
    build). Shared: never modify the returned message."""
    check = health_check_pb2.HealthCheck(
        http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(path="/ready"),
        timeout=_s(1),
        interval=_s(5),
        no_traffic_interval=_s(30),
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=2),
        healthy_threshold=wrappers_pb2.UInt32Value(value=1),
    )
    return cluster_pb2.Cluster(
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads()),
        connect_timeout=_s(1),
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
        # An instance EDS no longer lists leaves the balancer at once, healthy or not: the
        # provisioner stops an instance only after this configuration is applied.
        ignore_health_on_host_removal=True,
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    # Retries only repeat requests no model has seen (see _retry_policy), so
                    # every request in flight may have one: a budget of 100% never turns a
                    # retry into an overflow, which Envoy would answer as a misleading 429.
                    # The budget replaces max_retries (whose fixed 3 did exactly that).
                    retry_budget=circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(
                        budget_percent=percent_pb2.Percent(value=100.0),
                    ),
                )
            ]
        ),
        outlier_detection=outlier_detection_pb2.OutlierDetection(
            split_external_local_origin_errors=True,
            consecutive_local_origin_failure=wrappers_pb2.UInt32Value(value=3),
            enforcing_consecutive_local_origin_failure=wrappers_pb2.UInt32Value(value=100),
            consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=3),
            enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=100),
            enforcing_consecutive_5xx=wrappers_pb2.UInt32Value(value=0),
            enforcing_success_rate=wrappers_pb2.UInt32Value(value=0),
            interval=_s(5),
            base_ejection_time=_s(10),
            max_ejection_percent=wrappers_pb2.UInt32Value(value=50),
        ),
        health_checks=[check],
    )


@functools.cache
def _options_template() -> http_protocol_options_pb2.HttpProtocolOptions:
    """The clusters' protocol options (HTTP/1.1) and upstream filters; the first filter's
    config is the deployment's own (_gateway_header). Shared: never modify the returned
    message."""
    explicit = http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
        http_protocol_options=protocol_pb2.Http1ProtocolOptions()
    )
    return http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=explicit,
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(idle_timeout=_s(60)),
        http_filters=[
            hcm_pb2.HttpFilter(name="envoy.filters.http.header_mutation"),
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.upstream_codec",
                typed_config=pack(upstream_codec_pb2.UpstreamCodec()),
            ),
        ],
    )


def deployment_cluster(dep: Deployment) -> cluster_pb2.Cluster:
    """The deployment's cluster (REST and bridged gRPC alike): the template plus its name,
    its owner (metadata), Azure's in-flight limit as circuit breaker (overflow -> 429) and
    the deployment's gateway secret."""
    limit = dep.max_in_flight
    cluster = cluster_pb2.Cluster()
    cluster.CopyFrom(_cluster_template())
    cluster.name = dep.cluster
    cluster.metadata.CopyFrom(_metadata(endpoint=dep.endpoint, deployment=dep.name))
    thresholds = cluster.circuit_breakers.thresholds[0]
    thresholds.max_connections.value = limit
    thresholds.max_pending_requests.value = limit
    thresholds.max_requests.value = limit
    thresholds.retry_budget.min_retry_concurrency.value = limit
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.CopyFrom(_options_template())
    options.http_filters[0].typed_config.CopyFrom(_gateway_header(dep))
    cluster.typed_extension_protocol_options[PROTOCOL_OPTIONS].CopyFrom(pack(options))
    return cluster


def load_assignment(dep: Deployment) -> endpoint_pb2.ClusterLoadAssignment:
    """The deployment's ready instances."""
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=dep.cluster,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(address=_socket(u.host, u.port)),
                        # Also what the access log records (sluice.common.access_log).
                        metadata=_metadata(endpoint=dep.endpoint, deployment=dep.name),
                    )
                    for u in dep.instances
                ]
            )
        ],
    )


# ---- routes ----------------------------------------------------------------------------


def _rbac_per_route(auth: KeyAuth | TokenAuth | None) -> any_pb2.Any:
    """None disables the listener's deny-all RBAC for this route (404 answers)."""
    if auth is None:
        return pack(rbac_filter_pb2.RBACPerRoute())
    if isinstance(auth, KeyAuth):
        # The hash of `Bearer <key>` the key_hash filter wrote: keys never leave the controller.
        principals = [
            rbac_pb2.Principal(
                header=route_components_pb2.HeaderMatcher(
                    name=key_hash.HEADER,
                    string_match=string_pb2.StringMatcher(exact=key_hash.key_hash(key)),
                )
            )
            for key in auth.keys
        ]
    else:
        principals = [
            rbac_pb2.Principal(
                sourced_metadata=rbac_pb2.SourcedMetadata(
                    metadata_matcher=metadata_pb2.MetadataMatcher(
                        filter=JWT_FILTER,
                        path=[
                            metadata_pb2.MetadataMatcher.PathSegment(key=JWT_PAYLOAD_KEY),
                            metadata_pb2.MetadataMatcher.PathSegment(key="aud"),
                        ],
                        value=value_pb2.ValueMatcher(
                            string_match=string_pb2.StringMatcher(exact=auth.audience)
                        ),
                    )
                )
            )
        ]
    policy = rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=principals)
    return pack(
        rbac_filter_pb2.RBACPerRoute(
            rbac=rbac_filter_pb2.RBAC(
                rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies={"endpoint": policy})
            )
        )
    )


def _jwt_per_route(auth: KeyAuth | TokenAuth | None) -> any_pb2.Any:
    if isinstance(auth, TokenAuth):
        return pack(jwt_pb2.PerRouteConfig(requirement_name=JWT_REQUIREMENT))
    return pack(jwt_pb2.PerRouteConfig(disabled=True))


def _filters(auth: KeyAuth | TokenAuth | None) -> dict[str, any_pb2.Any]:
    return {JWT_FILTER: _jwt_per_route(auth), RBAC_FILTER: _rbac_per_route(auth)}


@functools.cache
def _retry_policy() -> route_components_pb2.RetryPolicy:
    """Retry on another instance what got no answer: a failed connect, a refused stream, the
    inference server's refusal before processing (a draining or not-yet-ready server marks
    its 503 with NOT_PROCESSED_HEADER) and a connection reset before the answer began. The
    last is what a crashed instance leaves its requests in flight (auto-recovery fails no
    request: tests/chaos), at a price: a request that itself crashes the server is tried on
    up to two more instances before the client gets 502. No answer the model gave is
    retried. Shared by every route (a message field set from it is a copy): never modify it."""
    return route_components_pb2.RetryPolicy(
        retry_on="connect-failure,reset,refused-stream,retriable-headers",
        retriable_headers=[
            route_components_pb2.HeaderMatcher(
                name=NOT_PROCESSED_HEADER, string_match=string_pb2.StringMatcher(exact="true")
            )
        ],
        num_retries=wrappers_pb2.UInt32Value(value=2),
        retry_host_predicate=[
            route_components_pb2.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=3,
    )


def _action(
    *,
    timeout_ms: int,
    prefix: str | None,
    cluster: str | None = None,
    weighted: route_components_pb2.WeightedCluster | None = None,
    mirror: Iterable[route_components_pb2.RouteAction.RequestMirrorPolicy] = (),
) -> route_components_pb2.RouteAction:
    action = route_components_pb2.RouteAction(
        timeout=_ms(timeout_ms), request_mirror_policies=list(mirror)
    )
    if cluster is not None:
        action.cluster = cluster
    if weighted is not None:
        action.weighted_clusters.CopyFrom(weighted)
    if prefix is not None:
        action.prefix_rewrite = "/"
    return action


def _match(prefix: str | None, *headers: route_components_pb2.HeaderMatcher) -> object:
    return route_components_pb2.RouteMatch(prefix=prefix or "/", headers=list(headers))


def _grpc_match(*headers: route_components_pb2.HeaderMatcher) -> object:
    """gRPC requests (content-type application/grpc) to the inference service."""
    return route_components_pb2.RouteMatch(
        prefix=GRPC_SERVICE_PREFIX,
        grpc=route_components_pb2.RouteMatch.GrpcRouteMatchOptions(),
        headers=list(headers),
    )


def _not_found(
    name: str, match: object, message: str, filters: dict[str, any_pb2.Any]
) -> route_components_pb2.Route:
    return route_components_pb2.Route(
        name=name,
        match=match,
        direct_response=route_components_pb2.DirectResponseAction(
            status=404, body=base_pb2.DataSource(inline_string=message)
        ),
        typed_per_filter_config=filters,
    )


def endpoint_routes(
    ep: Endpoint, prefix: str | None, *, grpc: bool = False
) -> list[route_components_pb2.Route]:
    """The routes of one endpoint, under `prefix` (rewritten to `/`) or at its own host;
    with `grpc`, those of its gRPC inference service (at its own host), which the reverse
    bridge sends to the same clusters (grpc_bridge.py).

    The retry policy is their virtual host's (Envoy builds it once per host, not per route).
    At its own host the routes inherit the endpoint's auth and header removal from its
    virtual host too (route_piece); under `prefix`, in the catch-all host that all
    endpoints share, each route carries its own."""
    strip = _stripped(ep) if prefix else []
    filters = _filters(ep.auth) if prefix else {}
    tag = f"{ep.name}{'@path' if prefix else ''}{'@grpc' if grpc else ''}"
    if grpc:
        # Enabled here only (disabled by default in the listener).
        enable = route_components_pb2.FilterConfig(config=any_pb2.Any())
        filters = {**filters, grpc_bridge.FILTER: pack(enable)}

    def match(*headers: route_components_pb2.HeaderMatcher) -> object:
        return _grpc_match(*headers) if grpc else _match(prefix, *headers)

    routes = []
    for dep in ep.deployments:
        pin = route_components_pb2.HeaderMatcher(
            name=DEPLOYMENT_HEADER, string_match=string_pb2.StringMatcher(exact=dep.name)
        )
        routes.append(
            route_components_pb2.Route(
                name=f"{tag}/pin/{dep.name}",
                match=match(pin),
                metadata=_metadata(endpoint=ep.name, deployment=dep.name),
                route=_action(
                    timeout_ms=dep.request_timeout_ms,
                    prefix=prefix,
                    cluster=dep.cluster,
                ),
                request_headers_to_remove=strip,
                typed_per_filter_config=filters,
            )
        )
    any_pin = route_components_pb2.HeaderMatcher(name=DEPLOYMENT_HEADER, present_match=True)
    routes.append(
        _protected_not_found(
            f"{tag}/pin/unknown",
            ep.name,
            match(any_pin),
            f"endpoint {ep.name!r} has no deployment of the name given in the "
            f"{DEPLOYMENT_HEADER} header",
            filters,
        )
    )
    routes.append(_default_route(ep, prefix, tag, strip, filters, match()))
    return routes


def _protected_not_found(
    name: str, endpoint: str, match: object, message: str, filters: dict[str, any_pb2.Any]
) -> route_components_pb2.Route:
    """A 404 that still requires the endpoint's credentials (no probing deployment names)."""
    route = _not_found(name, match, message, filters)
    route.metadata.CopyFrom(_metadata(endpoint=endpoint))
    return route


def _default_route(
    ep: Endpoint,
    prefix: str | None,
    tag: str,
    strip: list[str],
    filters: dict[str, any_pb2.Any],
    match: object,
) -> route_components_pb2.Route:
    if not ep.traffic:
        return _protected_not_found(
            f"{tag}/split",
            ep.name,
            match,
            f"endpoint {ep.name!r} has no deployment with traffic above 0%: set traffic, or "
            f"name a deployment in the {DEPLOYMENT_HEADER} header",
            filters,
        )
    weighted = route_components_pb2.WeightedCluster(
        clusters=[
            route_components_pb2.WeightedCluster.ClusterWeight(
                name=ep_cluster(ep, share.deployment),
                weight=wrappers_pb2.UInt32Value(value=share.percent),
            )
            for share in ep.traffic
        ]
    )
    mirror = []
    if ep.mirror is not None:
        mirror.append(
            route_components_pb2.RouteAction.RequestMirrorPolicy(
                cluster=ep_cluster(ep, ep.mirror.deployment),
                # Without a fraction a mirror policy copies every request.
                runtime_fraction=base_pb2.RuntimeFractionalPercent(
                    default_value=percent_pb2.FractionalPercent(
                        numerator=ep.mirror.percent,
                        denominator=percent_pb2.FractionalPercent.HUNDRED,
                    ),
                    runtime_key=f"sluice.mirror.{ep.name}",
                ),
                request_headers_mutations=[
                    mutation_rules_pb2.HeaderMutation(
                        append=_header(MIRROR_HEADER, "1"),
                    )
                ],
            )
        )
    return route_components_pb2.Route(
        name=f"{tag}/split",
        match=match,
        metadata=_metadata(endpoint=ep.name),
        route=_action(
            timeout_ms=ep.split_timeout_ms(), prefix=prefix, weighted=weighted, mirror=mirror
        ),
        request_headers_to_remove=strip,
        typed_per_filter_config=filters,
    )


def ep_cluster(ep: Endpoint, deployment: str) -> str:
    dep = ep.deployment(deployment)
    if dep is None:
        raise ValueError(f"endpoint {ep.name!r} routes to unknown deployment {deployment!r}")
    return dep.cluster


def _stripped(ep: Endpoint) -> list[str]:
    """Request headers the endpoint's instances never see: a key endpoint's key and its hash
    (a token endpoint's token is removed by jwt_authn itself)."""
    return ["authorization", key_hash.HEADER] if isinstance(ep.auth, KeyAuth) else []


def path_routes(ep: Endpoint) -> list[route_components_pb2.Route]:
    return endpoint_routes(ep, f"{PATH_PREFIX}{ep.name}/")


# ---- batch endpoints' scoring URIs ------------------------------------------------------


def _transcoder(batch: BatchJobs) -> transcoder_pb2.GrpcJsonTranscoder:
    """Envoy's gRPC-JSON transcoder for the batch service alone, as the management
    listener's (xds/management.py): JSON errors with the gRPC code's HTTP status."""
    return transcoder_pb2.GrpcJsonTranscoder(
        proto_descriptor_bin=batch.descriptor_set,
        services=[BATCH_SERVICE],
        print_options=transcoder_pb2.GrpcJsonTranscoder.PrintOptions(
            always_print_primitive_fields=True
        ),
        convert_grpc_status=True,
        ignore_unknown_query_parameters=True,
    )


@functools.cache
def _batch_retries() -> route_components_pb2.RetryPolicy:
    """The batch routes' own policy, instead of the catch-all host's (which also retries a
    reset connection: a job request would then make a second job)."""
    return route_components_pb2.RetryPolicy(
        retry_on="connect-failure,refused-stream", num_retries=wrappers_pb2.UInt32Value(value=2)
    )


def batch_job_routes(batch: BatchJobs | None) -> list[route_components_pb2.Route]:
    """A batch endpoint's scoring URI: `POST /endpoints/<e>/jobs` and `POST <e>.<domain>/jobs`
    start a job (Batch.CreateEndpointJob), `GET` of `.../jobs/<job>` reads it back
    (GetEndpointJob; GetJobResource at the host). The batch service checks the caller's
    Sluice token as it does for any call, so Envoy's endpoint auth (JWT, RBAC) is off on
    these routes, and so is the model-error Lua (the service's own 400/401/404 stay as they
    are). Last in the catch-all host: an online endpoint's routes are matched first (the
    names are unique across both kinds), and a scoring request never evaluates the regexes."""
    if batch is None:
        return []
    filters = {
        **_filters(None),
        LUA_FILTER: pack(lua_pb2.LuaPerRoute(disabled=True)),
        TRANSCODER_FILTER: pack(route_components_pb2.FilterConfig(config=any_pb2.Any())),
    }
    host = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=ENDPOINT_HOST_HEADER, value="%REQ(:AUTHORITY)%"),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )

    def method(verb: str) -> route_components_pb2.HeaderMatcher:
        return route_components_pb2.HeaderMatcher(
            name=":method", string_match=string_pb2.StringMatcher(exact=verb)
        )

    def regex(pattern: str, verb: str) -> route_components_pb2.RouteMatch:
        return route_components_pb2.RouteMatch(
            safe_regex=regex_pb2.RegexMatcher(regex=pattern), headers=[method(verb)]
        )

    def transcoded(call: str) -> route_components_pb2.RouteMatch:
        # The transcoder turns the request into the gRPC call and routes it again, by its
        # new path: that route is the one that sends it (and adds the host header).
        return route_components_pb2.RouteMatch(
            path=f"/{BATCH_SERVICE}/{call}",
            grpc=route_components_pb2.RouteMatch.GrpcRouteMatchOptions(),
        )

    matches = {
        "batch-jobs@path": regex(f"^{PATH_PREFIX}[^/]+/jobs$", "POST"),
        "batch-jobs@host": route_components_pb2.RouteMatch(path="/jobs", headers=[method("POST")]),
        "batch-job@path": regex(f"^{PATH_PREFIX}[^/]+/jobs/[^/]+$", "GET"),
        "batch-job@host": regex("^/jobs/[^/]+$", "GET"),
        **{
            f"batch-jobs@grpc/{call}": transcoded(call)
            for call in ("CreateEndpointJob", "GetEndpointJob", "GetJobResource")
        },
    }
    return [
        route_components_pb2.Route(
            name=name,
            match=match,
            # Inputs are listed (and downloaded) before the job is created. Retried only when
            # the request never reached the service: a POST that did may have made a job.
            route=route_components_pb2.RouteAction(
                cluster=BATCH_JOBS_CLUSTER, timeout=_s(300), retry_policy=_batch_retries()
            ),
            request_headers_to_add=[host],
            request_headers_to_remove=[key_hash.HEADER],
            typed_per_filter_config=filters,
        )
        for name, match in matches.items()
    ]


# The route table is assembled from serialized pieces (route_configuration).
_VIRTUAL_HOSTS = route_pb2.RouteConfiguration.VIRTUAL_HOSTS_FIELD_NUMBER
_ROUTES = route_components_pb2.VirtualHost.ROUTES_FIELD_NUMBER


def _field(number: int, message: bytes) -> bytes:
    """A serialized message as field `number` of its parent, in protobuf's wire format: the
    key (field number, wire type 2) and the length as varints, then the bytes."""
    prefix = bytearray()
    for value in ((number << 3) | 2, len(message)):
        while value > 0x7F:
            prefix.append(value & 0x7F | 0x80)
            value >>= 7
        prefix.append(value)
    return bytes(prefix) + message


def _serialized(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)


def _host(
    head: route_components_pb2.VirtualHost,
    routes: Iterable[route_components_pb2.Route],
    tail: route_components_pb2.VirtualHost,
) -> bytes:
    """A virtual host serialized from its parts, in field order: `head` holds its fields
    before `routes` (name, domains), `tail` those after them."""
    return b"".join(
        [_serialized(head), *(_field(_ROUTES, _serialized(r)) for r in routes), _serialized(tail)]
    )


@dataclass(frozen=True)
class RoutePiece:
    """One endpoint's part of the route table, serialized: its virtual host (as a field of
    the table) and its `/endpoints/<name>/` routes (as fields of the catch-all host); and
    the clusters those routes name (for the snapshot's check)."""

    vhost: bytes
    path_routes: bytes
    clusters: frozenset[str]


def route_piece(ep: Endpoint, domain: str) -> RoutePiece:
    """The endpoint's own host `<endpoint>.<domain>`, whose routes share its auth, retry
    policy and header removal (endpoint_routes), and its routes under the path prefix."""
    host = f"{ep.host}.{domain.lower()}"
    own = [
        *endpoint_routes(ep, None, grpc=True),
        *endpoint_routes(ep, None),
    ]
    under_path = path_routes(ep)
    vhost = _host(
        route_components_pb2.VirtualHost(name=f"endpoint:{ep.name}", domains=[host, f"{host}:*"]),
        own,
        route_components_pb2.VirtualHost(
            request_headers_to_remove=_stripped(ep),
            typed_per_filter_config=_filters(ep.auth),
            retry_policy=_retry_policy(),
        ),
    )
    return RoutePiece(
        vhost=_field(_VIRTUAL_HOSTS, vhost),
        path_routes=b"".join(_field(_ROUTES, _serialized(r)) for r in under_path),
        clusters=referenced_clusters([*own, *under_path]),
    )


@functools.cache
def _table_parts(batch: BatchJobs | None) -> tuple[bytes, bytes, bytes, bytes]:
    """The serialized fields of the table around its endpoints' pieces, in field order: its
    name; the catch-all host's fields before its routes; the catch-all's last routes (the
    batch endpoints' scoring URIs, a 404) and fields after its routes (the retry policy of
    the `/endpoints/<name>/` routes); the table's fields after its hosts."""
    unknown = _not_found(
        "unknown-endpoint",
        _match(None),
        "no online endpoint answers here: use https://<endpoint>.<domain>/score or "
        "/endpoints/<endpoint>/score",
        _filters(None),
    )
    after = route_pb2.RouteConfiguration(
        response_headers_to_add=[SERVED_BY],
        validate_clusters=wrappers_pb2.BoolValue(value=False),
        # Only the mirror policy sets it: a client's copy must not pass as a mirrored one.
        request_headers_to_remove=[MIRROR_HEADER],
    )
    return (
        _serialized(route_pb2.RouteConfiguration(name=ROUTE_CONFIG)),
        _serialized(route_components_pb2.VirtualHost(name=CATCH_ALL_VHOST, domains=["*"])),
        b"".join(_field(_ROUTES, _serialized(r)) for r in [*batch_job_routes(batch), unknown])
        + _serialized(route_components_pb2.VirtualHost(retry_policy=_retry_policy())),
        _serialized(after),
    )


def route_clusters(pieces: Iterable[RoutePiece], batch: BatchJobs | None = None) -> frozenset[str]:
    """The clusters the route table of `pieces` names (its own 404 names none)."""
    own = {BATCH_JOBS_CLUSTER} if batch is not None else set()
    return frozenset(own).union(*(p.clusters for p in pieces))


def route_configuration(
    pieces: Iterable[RoutePiece], batch: BatchJobs | None = None
) -> any_pb2.Any:
    """The one route table (packed): every endpoint's virtual host, then the catch-all host
    with every endpoint's `/endpoints/<name>/` routes and a 404 for any other request.

    Joined from the endpoints' serialized pieces instead of built and serialized whole: a
    change to one endpoint re-serializes its piece only, not 16 routes x 1,000s of
    endpoints. Deterministic serialization writes fields in field-number order, and so
    does this join, so the bytes (and the content hash) are the same either way."""
    pieces = list(pieces)
    name, catch_all_head, catch_all_tail, after = _table_parts(batch)
    catch_all = b"".join([catch_all_head, *(p.path_routes for p in pieces), catch_all_tail])
    table = b"".join([name, *(p.vhost for p in pieces), _field(_VIRTUAL_HOSTS, catch_all), after])
    return any_pb2.Any(
        type_url="type.googleapis.com/" + route_pb2.RouteConfiguration.DESCRIPTOR.full_name,
        value=table,
    )


# ---- listeners -------------------------------------------------------------------------


def _json_body(
    message: str | None = None,
) -> substitution_format_string_pb2.SubstitutionFormatString:
    fields = {
        "message": struct_pb2.Value(string_value=message or "%LOCAL_REPLY_BODY%"),
        "status": struct_pb2.Value(string_value="%RESPONSE_CODE%"),
        "request_id": struct_pb2.Value(string_value="%REQ(X-REQUEST-ID)%"),
    }
    return substitution_format_string_pb2.SubstitutionFormatString(
        json_format=struct_pb2.Struct(fields=fields),
        content_type="application/json",
    )


def _mapper(
    flags: list[str] | None, status_in: int | None, status_out: int, message: str
) -> hcm_pb2.ResponseMapper:
    if flags is not None:
        where = accesslog_pb2.AccessLogFilter(
            response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=flags)
        )
    else:
        where = accesslog_pb2.AccessLogFilter(
            status_code_filter=accesslog_pb2.StatusCodeFilter(
                comparison=accesslog_pb2.ComparisonFilter(
                    op=accesslog_pb2.ComparisonFilter.EQ,
                    value=base_pb2.RuntimeUInt32(
                        default_value=status_in or 0, runtime_key="sluice.unused"
                    ),
                )
            )
        )
    return hcm_pb2.ResponseMapper(
        filter=where,
        status_code=wrappers_pb2.UInt32Value(value=status_out),
        body_format_override=_json_body(message),
    )


def local_replies(limits: Limits) -> hcm_pb2.LocalReplyConfig:
    """Envoy's own answers as Azure's status codes, each with a JSON body."""
    return hcm_pb2.LocalReplyConfig(
        mappers=[
            # RBAC denies with 403; for a missing or wrong key Azure answers 401.
            _mapper(
                None,
                403,
                401,
                "missing or invalid credentials: send 'Authorization: Bearer <key or token>' "
                "(sluice online-endpoint get-credentials)",
            ),
            _mapper(
                ["UO"],
                None,
                429,
                "too many pending requests: more than 2 x max_concurrent_requests_per_instance "
                "x instances are in flight for this deployment; retry with backoff",
            ),
            _mapper(["UT"], None, 408, "the model did not answer within request_timeout_ms"),
            _mapper(
                None,
                408,
                408,
                f"the request was not received within {limits.receive_timeout_s:g} s",
            ),
            _mapper(
                None,
                413,
                413,
                f"the request body is larger than the gateway's limit of "
                f"{limits.max_request_bytes} bytes",
            ),
            _mapper(["UH"], None, 503, "no ready instance of this deployment (yet)"),
            # The connection closed (a crash) or the answer was not HTTP, on every try.
            _mapper(
                ["UC", "UPE"],
                None,
                502,
                "the model server crashed or closed the connection before answering",
            ),
        ],
        body_format=_json_body(),
    )


def _access_log(buffer_bytes: int, *, mirror: bool = False) -> accesslog_pb2.AccessLog:
    """Envoy's fluentd access logger: the compact record of sluice.common.access_log, in
    batches to the metrics service over the bootstrap's access-log cluster. The connection
    manager's log has one record per client request; with `mirror`, the router's upstream
    log restricted to mirrored copies, one per copy. Cheaper for Envoy than the gRPC access
    log, whose ~650-byte entry cannot leave out fields (bench/README.md, "metrics"). No
    headers beyond the record's: keys and tokens stay out of access logs."""
    config = fluentd_pb2.FluentdAccessLogConfig(
        cluster=ACCESS_LOG_CLUSTER,
        tag=access_log.TAG,
        stat_prefix=access_log.TAG,
        buffer_flush_interval=_s(1),
        buffer_size_bytes=wrappers_pb2.UInt32Value(value=buffer_bytes),
        # Reconnect quickly (a restarted metrics service), never give up (the default).
        retry_options=fluentd_pb2.FluentdAccessLogConfig.RetryOptions(
            backoff_options=backoff_pb2.BackoffStrategy(
                base_interval=duration_pb2.Duration(nanos=100_000_000), max_interval=_s(1)
            )
        ),
    )
    config.record.update(access_log.record(mirror=mirror))
    log = accesslog_pb2.AccessLog(name="envoy.access_loggers.fluentd", typed_config=pack(config))
    if mirror:
        log.filter.CopyFrom(
            accesslog_pb2.AccessLogFilter(
                header_filter=accesslog_pb2.HeaderFilter(
                    header=route_components_pb2.HeaderMatcher(
                        name=MIRROR_HEADER, present_match=True
                    )
                )
            )
        )
    return log


def _http_filters(gateway: Gateway) -> list[hcm_pb2.HttpFilter]:
    jwks, limits = gateway.jwks, gateway.limits
    jwt = jwt_pb2.JwtAuthentication(
        providers={
            JWT_PROVIDER: jwt_pb2.JwtProvider(
                issuer=TOKEN_ISSUER,
                local_jwks=base_pb2.DataSource(inline_string=jwks),
                from_headers=[jwt_pb2.JwtHeader(name="authorization", value_prefix="Bearer ")],
                forward=False,
                payload_in_metadata=JWT_PAYLOAD_KEY,
            )
        },
        requirement_map={JWT_REQUIREMENT: jwt_pb2.JwtRequirement(provider_name=JWT_PROVIDER)},
    )
    # Deny everything a route does not allow explicitly.
    deny_all = rbac_filter_pb2.RBAC(rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW))
    lua = lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=MODEL_ERROR_LUA))
    hashing = lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=key_hash.LUA))
    # The whole request is read before any filter may answer on its own (401, 404, 429, 503).
    # Answering earlier forces Envoy to end the exchange abnormally: `connection: close` on
    # HTTP/1.1, and on HTTP/2 a RST_STREAM after the reply, which RFC 9113 allows but which
    # common clients (curl 7.88, Debian 12's) report as an error instead of the status.
    # Buffered whole, a slow sender holds no instance's slot; above the gateway's limit
    # (traffic.domain.Limits) it answers 413 itself.
    buffer = buffer_pb2.Buffer(
        max_request_bytes=wrappers_pb2.UInt32Value(value=limits.max_request_bytes)
    )
    return [
        hcm_pb2.HttpFilter(name="envoy.filters.http.buffer", typed_config=pack(buffer)),
        hcm_pb2.HttpFilter(name=JWT_FILTER, typed_config=pack(jwt)),
        # Before RBAC, on every request: the hash RBAC compares with the keys' (key_hash.py).
        hcm_pb2.HttpFilter(name=key_hash.FILTER, typed_config=pack(hashing)),
        hcm_pb2.HttpFilter(name=RBAC_FILTER, typed_config=pack(deny_all)),
        hcm_pb2.HttpFilter(name=LUA_FILTER, typed_config=pack(lua)),
        # After auth (unauthenticated calls are never bridged); only the ModelInfer
        # routes enable it.
        hcm_pb2.HttpFilter(
            name=grpc_bridge.FILTER, typed_config=pack(grpc_bridge.config()), disabled=True
        ),
        # Only the batch endpoints' scoring URIs enable it (batch_job_routes).
        *(
            [
                hcm_pb2.HttpFilter(
                    name=TRANSCODER_FILTER,
                    typed_config=pack(_transcoder(gateway.batch_jobs)),
                    disabled=True,
                )
            ]
            if gateway.batch_jobs is not None
            else []
        ),
        # Its configuration comes by itself (ECDS, `router_config`): adding or removing the
        # mirror log then applies to the next request, without replacing the listeners
        # (which would leave open connections on the old configuration until they drain).
        hcm_pb2.HttpFilter(
            name=ROUTER_CONFIG,  # ECDS asks for the filter's configuration by its name
            config_discovery=config_source_pb2.ExtensionConfigSource(
                config_source=_ads(), type_urls=[ROUTER_TYPE]
            ),
        ),
    ]


def router_config(gateway: Gateway, mirrors: bool) -> extension_pb2.TypedExtensionConfig:
    """The router of the gateway's listeners. With the access log on and an endpoint that
    `mirrors`, its upstream log records the mirrored copies (`_access_log`). Only then: with
    any upstream log Envoy copies every upstream answer's headers for it, whether the
    log's filter keeps the entry or not (12.7k of the gateway's ~540k instructions per
    request, bench/gateway_cost)."""
    mirrored = gateway.access_log and mirrors
    router = router_pb2.Router(
        # No per-request stats by response code and upstream time: the bootstrap's
        # stats_config rejects every one of them anyway, but Envoy still built and looked
        # up their names: 4% of its instructions per request (bench/gateway_cost).
        dynamic_stats=wrappers_pb2.BoolValue(value=False),
        upstream_log=[_access_log(gateway.access_log_buffer_bytes, mirror=True)]
        if mirrored
        else [],
    )
    return extension_pb2.TypedExtensionConfig(name=ROUTER_CONFIG, typed_config=pack(router))


def _connection_manager(name: str, gateway: Gateway) -> hcm_pb2.HttpConnectionManager:
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=ROUTE_CONFIG),
        http_filters=_http_filters(gateway),
        local_reply_config=local_replies(gateway.limits),
        request_headers_timeout=_s(gateway.limits.headers_timeout_s),
        request_timeout=_s(gateway.limits.receive_timeout_s),
        always_set_request_id_in_response=True,
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        access_log=[_access_log(gateway.access_log_buffer_bytes)] if gateway.access_log else [],
    )


def _listener(
    name: str, listen: Listen, gateway: Gateway, transport: base_pb2.TransportSocket | None
) -> listener_pb2.Listener:
    chain = listener_components_pb2.FilterChain(
        filters=[
            listener_components_pb2.Filter(
                name="envoy.filters.network.http_connection_manager",
                typed_config=pack(_connection_manager(name, gateway)),
            )
        ]
    )
    if transport is not None:
        chain.transport_socket.CopyFrom(transport)
    return listener_pb2.Listener(
        name=name, address=_socket(listen.host, listen.port), filter_chains=[chain]
    )


def gateway_tls() -> base_pb2.TransportSocket:
    """TLS with the gateway's certificate (the SDS secret TLS_SECRET): the HTTPS scoring
    listener's, and the management listener's when it is reachable off the host."""
    tls = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[
                secret_pb2.SdsSecretConfig(name=TLS_SECRET, sds_config=_ads())
            ],
            alpn_protocols=["h2", "http/1.1"],
        )
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(tls))


def listeners(gateway: Gateway) -> list[listener_pb2.Listener]:
    result = [_listener("sluice_https", gateway.https, gateway, gateway_tls())]
    if gateway.http is not None:
        result.append(_listener("sluice_http", gateway.http, gateway, None))
    return result


def tls_secret(gateway: Gateway) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=TLS_SECRET,
        tls_certificate=tls_common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=gateway.tls.certificate_chain),
            private_key=base_pb2.DataSource(inline_bytes=gateway.tls.private_key),
        ),
    )
