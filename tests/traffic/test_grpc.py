"""The Open Inference Protocol over gRPC through the gateway: a stock gRPC client (the
generated `inference.GRPCInferenceService` stub) reaches real inference servers with the
same keys and tokens, traffic split and `azureml-model-deployment` pin as REST, over h2c
and TLS. Every call is bridged by the gateway to the instances' HTTP/1.1 servers (the
gRPC message as it is): the instances here run no gRPC server at all."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from sluice.common.resources import AuthMode, OnlineEndpointSpec
from sluice.common.supervisor import Supervisor
from sluice.sdk.client import RegistryClient
from sluice.testing.inference import start_server, write_script
from sluice.testing.traffic import Traffic, World, eventually
from sluice.v1 import grpc_predict_v2_pb2 as pb
from sluice.v1 import grpc_predict_v2_pb2_grpc as pb_grpc

KEY = "primary-key-1"
# Each deployment answers with its own factor, so the answer says who served it.
SCRIPT = """
import json, os

FACTOR = {"blue": 1, "green": 100}[os.environ["AZUREML_DEPLOYMENT_NAME"]]

def init():
    pass

def run(raw):
    return [FACTOR * sum(row) for row in json.loads(raw)["data"]]
"""


def infer_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="oipg", id="g-1")
    request.inputs.add(name="x", datatype="FP64", shape=[1, 2])
    request.raw_input_contents.append(struct.pack("<2d", 1.0, 2.0))
    return request


def answer(reply: pb.ModelInferResponse) -> float:
    (value,) = struct.unpack("<d", reply.raw_output_contents[0])
    return float(value)


def start_deployment(supervisor: Supervisor, tmp_path: Path, name: str) -> str:
    code = write_script(tmp_path / name, SCRIPT)
    server = start_server(supervisor, f"oipg-{name}", code=code, scope=("oipg", name))
    return f"127.0.0.1:{server.port}"


async def test_grpc_scoring_through_the_gateway(
    traffic_with_registry: Traffic,
    client: RegistryClient,
    world: World,
    supervisor: Supervisor,
    tmp_path: Path,
) -> None:
    traffic = traffic_with_registry
    blue = start_deployment(supervisor, tmp_path, "blue")
    green = start_deployment(supervisor, tmp_path, "green")
    await world.deployment("oipg", "blue", [blue])
    await world.deployment("oipg", "green", [green])
    await world.endpoint("oipg", traffic={"blue": 100})
    # REST scoring is unchanged.
    rows = b'{"data": [[1, 2]]}'
    eventually(lambda: traffic.score("oipg", KEY, body=rows), lambda r: r[0] == 200)
    assert traffic.score("oipg", KEY, body=rows)[2] == b"[3]"

    options = [("grpc.default_authority", traffic.host("oipg"))]
    with grpc.insecure_channel(f"127.0.0.1:{traffic.http.port}", options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def infer(*metadata: tuple[str, str]) -> tuple[pb.ModelInferResponse, grpc.Call]:
            reply, call = stub.ModelInfer.with_call(infer_request(), metadata=metadata, timeout=20)
            return reply, call

        def refused(*metadata: tuple[str, str]) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as failed:
                infer(*metadata)
            return failed.value

        key = ("authorization", f"Bearer {KEY}")
        # The cluster's first health check may still be under way.
        served = eventually(lambda: _attempt(infer, key), lambda r: r is not None)
        assert served is not None
        reply, call = served
        assert reply.id == "g-1" and answer(reply) == 3.0
        assert dict(call.initial_metadata())["azureml-model-deployment"] == "blue"

        # Pinned to a deployment at 0% traffic, as with REST.
        reply, call = infer(key, ("azureml-model-deployment", "green"))
        assert answer(reply) == 300.0
        assert dict(call.initial_metadata())["azureml-model-deployment"] == "green"

        # Without a key, or with a wrong one: Envoy's 401, as gRPC's UNAUTHENTICATED, and
        # no deployment named.
        for metadata in [(), (("authorization", "Bearer wrong-key"),)]:
            error = refused(*metadata)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
            assert "missing or invalid credentials" in error.details()
            names = dict(error.initial_metadata() or ()) | dict(error.trailing_metadata() or ())
            assert "azureml-model-deployment" not in names
        # A pin to no deployment of the endpoint: Envoy's 404 (UNIMPLEMENTED in gRPC).
        error = refused(key, ("azureml-model-deployment", "red"))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "no deployment of the name" in error.details()
        # Typed contents (not raw): int64 values.
        typed = pb.ModelInferRequest(model_name="oipg")
        x = typed.inputs.add(name="x", datatype="INT64", shape=[1, 2])
        x.contents.int64_contents.extend([2**40, 5])
        reply = stub.ModelInfer(typed, metadata=[key], timeout=20)
        assert reply.outputs[0].datatype == "INT64"
        assert struct.unpack("<q", reply.raw_output_contents[0]) == (2**40 + 5,)
        # A tensor above Envoy's default 1 MiB buffer: the gateway's request limit applies
        # (16 MiB by default).
        big = pb.ModelInferRequest(model_name="oipg")
        big.inputs.add(name="x", datatype="FP64", shape=[1, 200_000])
        big.raw_input_contents.append(struct.pack("<200000d", *([0.5] * 200_000)))
        assert answer(stub.ModelInfer(big, metadata=[key], timeout=30)) == 100_000.0
        # The model's own errors pass through as gRPC statuses.
        wrong = infer_request()
        wrong.raw_input_contents[0] = b"\0" * 8
        with pytest.raises(grpc.RpcError) as failed:
            stub.ModelInfer(wrong, metadata=[key], timeout=20)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # The other methods go the same way (and need the key too), each answered by the
        # instance's REST twin.
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="oipg"), metadata=[key])
        assert meta.name == "blue" and meta.platform
        assert stub.ModelReady(pb.ModelReadyRequest(name="oipg"), metadata=[key]).ready
        assert stub.ServerLive(pb.ServerLiveRequest(), metadata=[key]).live
        assert stub.ServerReady(pb.ServerReadyRequest(), metadata=[key]).ready
        server = stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=[key])
        assert server.name and server.version
        with pytest.raises(grpc.RpcError) as failed:
            stub.ModelReady(pb.ModelReadyRequest(name="nope"), metadata=[key])
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no model 'nope'" in failed.value.details()
        with pytest.raises(grpc.RpcError) as failed:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="oipg"))  # no key
        assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # The split moves gRPC as it moves REST.
    await world.endpoint("oipg", traffic={"green": 100}, version=2)
    eventually(lambda: traffic.score("oipg", KEY, body=rows)[2], lambda b: b == b"[300]")
    # Over TLS (ALPN h2) on the HTTPS listener, with the gateway's certificate.
    ca = (traffic.state_dir / "tls" / "ca.crt").read_bytes()
    tls_options = [("grpc.ssl_target_name_override", traffic.host("oipg"))]
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    target = f"127.0.0.1:{traffic.https.port}"
    with grpc.secure_channel(target, credentials, options=tls_options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        reply = eventually(
            lambda: stub.ModelInfer(
                infer_request(), metadata=[("authorization", f"Bearer {KEY}")], timeout=20
            ),
            lambda r: answer(r) == 300.0,
        )
        assert reply.model_name == "green"

    # An aml_token endpoint on the same instances: a valid token for this endpoint passes
    # (jwt_authn and the audience check, the per-route filters REST has), others do not.
    client.create_online_endpoint(OnlineEndpointSpec(name="oipt", auth_mode=AuthMode.aml_token))
    await world.deployment("oipt", "blue", [blue])
    client.set_traffic("oipt", {"blue": 100})
    token = client.get_credentials("oipt").access_token
    assert token
    eventually(lambda: traffic.score("oipt", token, body=rows), lambda r: r[0] == 200)
    options = [("grpc.default_authority", traffic.host("oipt"))]
    with grpc.insecure_channel(f"127.0.0.1:{traffic.http.port}", options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def with_token(bearer: str | None) -> pb.ModelInferResponse:
            metadata = [("authorization", f"Bearer {bearer}")] if bearer else []
            reply: pb.ModelInferResponse = stub.ModelInfer(
                infer_request(), metadata=metadata, timeout=20
            )
            return reply

        assert answer(with_token(token)) == 3.0
        ready = stub.ModelReady(
            pb.ModelReadyRequest(name="oipg"), metadata=[("authorization", f"Bearer {token}")]
        )
        assert ready.ready
        for bad in (None, KEY, "not-a-jwt"):  # KEY: the key endpoint's
            with pytest.raises(grpc.RpcError) as failed:
                with_token(bad)
            assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED, bad


def _attempt(
    infer: Callable[..., tuple[pb.ModelInferResponse, grpc.Call]], *metadata: tuple[str, str]
) -> tuple[pb.ModelInferResponse, grpc.Call] | None:
    try:
        return infer(*metadata)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNAVAILABLE:  # no healthy host yet
            return None
        raise
