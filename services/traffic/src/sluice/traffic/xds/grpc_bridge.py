"""OIP gRPC bridged by the gateway to the instances' HTTP/1.1 server.

A call of `inference.GRPCInferenceService` (`ModelInfer`, and the cheap, rare others)
ends in Envoy: its HTTP/1.1 reverse bridge (`envoy.filters.http.grpc_http1_reverse_bridge`)
sends the request, gRPC frame and all (`content_type: application/grpc`, frames not
withheld), over the deployment's ordinary HTTP/1.1 cluster to the inference server's
route of the same path (inference/oip_grpc_http.py), and adds `grpc-status: 0` as the
trailer of a 200 answer.
An answer that is itself a gRPC status (a header-only 200 with `grpc-status` and
`grpc-message`, which the inference server sends for errors) passes through as a
trailers-only gRPC answer. Why: grpc.aio costs the inference server ~6 times its HTTP/1.1
server per call, and the gRPC-JSON reverse transcoder used before cost Envoy ~50 µs of
CPU per call for proto3 JSON both ways; the bridge only moves bytes (bench/README.md,
oip_grpc).

The bridge clears the route cache, so the request is routed again: by the same gRPC
routes (same split, pin header and retries as REST). Auth runs before it, on the gRPC
route. A deployment so needs one cluster for REST and gRPC: half the clusters, health
checks and load assignments of a gRPC twin cluster per deployment, which is what Envoy
spends its time on when it takes thousands of deployments (bench/xds_scale).
"""

from __future__ import annotations

from envoy.extensions.filters.http.grpc_http1_reverse_bridge.v3 import config_pb2

FILTER = "envoy.filters.http.grpc_http1_reverse_bridge"


def config() -> config_pb2.FilterConfig:
    """The bridge as the inference server expects it: the gRPC frame passed on as it is
    (the server reads and writes frames), content type unchanged."""
    return config_pb2.FilterConfig(content_type="application/grpc", withhold_grpc_frames=False)
