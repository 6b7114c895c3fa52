"""OIP gRPC `ModelInfer` ended in the gateway: Envoy's gRPC-JSON reverse transcoder.

A gRPC `inference.GRPCInferenceService/ModelInfer` call is turned by Envoy
(`envoy.filters.http.grpc_json_reverse_transcoder`) into `POST /v2/grpc/ModelInfer`
with the request message as proto3 JSON (proto field names; `bytes` such as
`raw_input_contents` in base64), sent over the deployment's ordinary HTTP/1.1 cluster;
the inference server's JSON answer (a ModelInferResponse) becomes the gRPC reply, and
an answer that is itself a gRPC status (`grpc-status` in a header-only 200, which the
inference server sends for errors) passes through as it is. Why: grpc.aio costs the
inference server ~134 µs per call against ~22 µs for its HTTP/1.1 server
(bench/README.md, oip_grpc), so gRPC could not keep up with REST.

The filter clears the route cache once it has rewritten the request, so the rewritten
request is routed again: as REST, by the endpoint's REST routes (same split, pin header
and retries). Auth runs before it, on the gRPC route. The other (cheap, rare) methods of
the service still go to the instances' gRPC servers.

Envoy needs the service's descriptor with a `google.api.http` rule on the method: built
here from the generated code, so the published .proto stays KServe's, unannotated.
"""

from __future__ import annotations

import functools

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from sluice.v1 import grpc_predict_v2_pb2

FILTER = "envoy.filters.http.grpc_json_reverse_transcoder"
METHOD_PATH = "/inference.GRPCInferenceService/ModelInfer"
HTTP_PATH = "/v2/grpc/ModelInfer"  # the inference server's route for it (oip_grpc_json.py)


@functools.cache
def descriptor_set() -> bytes:
    """The OIP service with ModelInfer mapped to `POST HTTP_PATH`, the whole message as
    body. The rule is an extension of MethodOptions that Envoy's own copy of
    google/api/annotations.proto reads, so the set leaves that file (and the 14 kB of
    descriptor.proto it imports) out: it is sent to Envoy on every listener update."""
    oip = descriptor_pb2.FileDescriptorProto()
    grpc_predict_v2_pb2.DESCRIPTOR.CopyToProto(oip)
    for method in oip.service[0].method:
        if method.name == "ModelInfer":
            rule = method.options.Extensions[annotations_pb2.http]
            rule.CopyFrom(http_pb2.HttpRule(post=HTTP_PATH, body="*"))
    return descriptor_pb2.FileDescriptorSet(file=[oip]).SerializeToString(deterministic=True)
