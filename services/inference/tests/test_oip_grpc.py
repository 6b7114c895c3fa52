"""The Open Inference Protocol over gRPC, straight to one inference server: the same run(),
model-name check, gateway secret and errors as REST /v2 (the gateway's routes: tests/
test_oip_grpc_gateway.py)."""

from __future__ import annotations

import struct
from pathlib import Path
from urllib.parse import unquote

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluice.common import gateway_auth
from sluice.common.supervisor import Supervisor, free_port
from sluice.inference.oip_grpc_http import PATH, SERVICE
from sluice.testing.inference import start_server, wait_until, write_script
from sluice.v1 import grpc_predict_v2_pb2 as pb
from sluice.v1 import grpc_predict_v2_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration  # starts an inference server process

SCRIPT = """
import json

def init():
    pass

def run(raw):
    body = json.loads(raw)
    if "data" in body:
        return [sum(row) for row in body["data"]]
    return {"total": [sum(row) for row in body["a"]], "label": ["x" * len(body["b"][0])]}
"""


GRPC_TYPE = {"Content-Type": "application/grpc"}


def fp64(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


def test_grpc_infer_metadata_health_and_errors(supervisor: Supervisor, tmp_path: Path) -> None:
    write_script(tmp_path, SCRIPT)
    (tmp_path / "summer.pkl").write_bytes(b"unused")
    grpc_port = free_port()
    server = start_server(
        supervisor,
        "oip-grpc",
        code=tmp_path,
        model=tmp_path / "summer.pkl",
        extra=["--grpc-port", str(grpc_port)],
    )
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="summer")).ready
        assert "binary_tensor_data" in stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="summer"))
        assert meta.name == "summer" and meta.outputs[0].name == "predict"
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING

        # Raw contents, as tritonclient sends them; the answer comes back raw.
        raw = pb.ModelInferRequest(model_name="summer", id="r1")
        raw.inputs.add(name="x", datatype="FP64", shape=[2, 2])
        raw.raw_input_contents.append(fp64(1, 2, 3, 4.5))
        reply, call = stub.ModelInfer.with_call(raw)
        assert (reply.model_name, reply.id) == ("summer", "r1")
        assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [
            ("predict", "FP64", [2])
        ]
        assert reply.raw_output_contents[0] == fp64(3, 7.5)
        assert dict(call.trailing_metadata())["x-request-id"]

        # Typed contents, several inputs and outputs, BYTES out; `outputs` filters.
        typed = pb.ModelInferRequest(model_name="summer")
        a = typed.inputs.add(name="a", datatype="INT64", shape=[1, 2])
        a.contents.int64_contents.extend([2, 5])
        b = typed.inputs.add(name="b", datatype="BYTES", shape=[1])
        b.contents.bytes_contents.append(b"hey")
        typed.outputs.add(name="label")
        reply = stub.ModelInfer(typed)
        assert [o.name for o in reply.outputs] == ["label"]
        assert reply.outputs[0].datatype == "BYTES"
        assert reply.raw_output_contents[0] == struct.pack("<I", 3) + b"xxx"

        def refused(request: pb.ModelInferRequest) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as failed:
                stub.ModelInfer(request)
            return failed.value

        other = pb.ModelInferRequest(model_name="other")
        other.CopyFrom(raw)
        other.model_name = "other"
        error = refused(other)
        assert error.code() == grpc.StatusCode.NOT_FOUND and "no model 'other'" in error.details()

        short = pb.ModelInferRequest()
        short.CopyFrom(raw)
        short.raw_input_contents[0] = fp64(1, 2, 3)
        error = refused(short)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "needs 4 values" in error.details()

        half = pb.ModelInferRequest(model_name="summer")
        half.inputs.add(name="h", datatype="FP16", shape=[1])
        error = refused(half)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "raw_input_contents" in error.details()

    # The same calls as the gateway's reverse bridge sends them (the gRPC message over the
    # HTTP port), answered with a gRPC message, or with a gRPC status in the headers.
    def bridged(request: pb.ModelInferRequest | bytes) -> tuple[pb.ModelInferResponse, dict]:
        body = request
        if isinstance(request, pb.ModelInferRequest):
            message = request.SerializeToString()
            body = struct.pack(">BI", 0, len(message)) + message
        answer = server.post(body, path=PATH, headers={"Content-Type": "application/grpc"})
        assert answer.status == 200, answer.body
        headers = {k.lower(): v for k, v in answer.headers.items()}
        assert headers["content-type"] == "application/grpc"
        reply = pb.ModelInferResponse()
        if "grpc-status" not in headers:
            assert struct.unpack(">BI", answer.body[:5]) == (0, len(answer.body) - 5)
            reply.ParseFromString(answer.body[5:])
        return reply, headers

    reply, headers = bridged(raw)
    assert (reply.model_name, reply.id, reply.raw_output_contents[0]) == (
        "summer",
        "r1",
        fp64(3, 7.5),
    )
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [
        ("predict", "FP64", [2])
    ]
    assert headers["x-request-id"]
    typed.inputs[0].contents.int64_contents[0] = 2**40
    reply, _ = bridged(typed)
    assert reply.raw_output_contents[0] == struct.pack("<I", 3) + b"xxx"
    for bad, code, message in [
        (short, grpc.StatusCode.INVALID_ARGUMENT, "needs 4 values"),
        (other, grpc.StatusCode.NOT_FOUND, "no model 'other'"),
        (half, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
        (b"\0\0\0\0\x09[1, 2]", grpc.StatusCode.INVALID_ARGUMENT, "not one gRPC message"),
        (b"\0\0\0\0\x02\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "not a ModelInferRequest"),
        (b"\x01\0\0\0\x00", grpc.StatusCode.UNIMPLEMENTED, "compressed"),
    ]:
        _, headers = bridged(bad)
        assert headers["grpc-status"] == str(code.value[0]), (bad, headers)
        assert message in unquote(headers["grpc-message"])

    # The service's other methods, bridged the same way, each answered by its REST twin.
    def other_method(name: str, request: Message, reply: Message) -> dict[str, str]:
        message = request.SerializeToString()
        body = struct.pack(">BI", 0, len(message)) + message
        answer = server.post(body, path=f"{SERVICE}{name}", headers=GRPC_TYPE)
        assert answer.status == 200, answer.body
        headers = {k.lower(): v for k, v in answer.headers.items()}
        assert headers["content-type"] == "application/grpc"
        if "grpc-status" not in headers:
            assert struct.unpack(">BI", answer.body[:5]) == (0, len(answer.body) - 5)
            reply.ParseFromString(answer.body[5:])
        return headers

    live, ready, model_ready = (
        pb.ServerLiveResponse(),
        pb.ServerReadyResponse(),
        pb.ModelReadyResponse(),
    )
    other_method("ServerLive", pb.ServerLiveRequest(), live)
    other_method("ServerReady", pb.ServerReadyRequest(), ready)
    other_method("ModelReady", pb.ModelReadyRequest(name="summer"), model_ready)
    assert live.live and ready.ready and model_ready.ready
    server_meta, meta = pb.ServerMetadataResponse(), pb.ModelMetadataResponse()
    other_method("ServerMetadata", pb.ServerMetadataRequest(), server_meta)
    assert "binary_tensor_data" in server_meta.extensions
    headers = other_method("ModelMetadata", pb.ModelMetadataRequest(name="summer"), meta)
    assert meta.name == "summer" and meta.outputs[0].name == "predict"
    assert headers["x-request-id"]
    for name, request, code, message in [
        ("ModelReady", pb.ModelReadyRequest(name="other"), grpc.StatusCode.NOT_FOUND, "no model"),
        (
            "ModelMetadata",
            pb.ModelMetadataRequest(name="a/b"),
            grpc.StatusCode.NOT_FOUND,
            "no model",
        ),
        ("RepositoryIndex", pb.ServerLiveRequest(), grpc.StatusCode.UNIMPLEMENTED, "no 'Reposi"),
    ]:
        headers = other_method(name, request, pb.ModelReadyResponse())
        assert headers["grpc-status"] == str(code.value[0]), (name, headers)
        assert message in unquote(headers["grpc-message"]), headers
    bad = b"\0\0\0\0\x02\xff\xff"
    answer = server.post(bad, path=f"{SERVICE}ModelReady", headers=GRPC_TYPE)
    headers = {k.lower(): v for k, v in answer.headers.items()}
    assert headers["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert "not a ModelReadyRequest" in unquote(headers["grpc-message"])


def test_grpc_requires_the_gateway_secret(supervisor: Supervisor, tmp_path: Path) -> None:
    """An instance started with a gateway secret refuses gRPC calls without it, as REST."""
    write_script(tmp_path, SCRIPT)
    grpc_port = free_port()
    supervisor_env = {gateway_auth.ENV: "s3cret"}
    server = start_server(
        supervisor,
        "oip-grpc-secret",
        code=tmp_path,
        extra=["--grpc-port", str(grpc_port)],
        env=supervisor_env,
    )
    request = pb.ModelInferRequest(model_name="model")
    request.inputs.add(name="x", datatype="FP64", shape=[1, 1]).contents.fp64_contents.append(1)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest()).ready  # health stays open
        with pytest.raises(grpc.RpcError) as failed:
            stub.ModelInfer(request)
        assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
        reply = stub.ModelInfer(request, metadata=[(gateway_auth.HEADER, "s3cret")])
        assert reply.raw_output_contents[0] == fp64(1)
    assert server.post({"data": [[1]]}).status == 403  # REST refuses alike


def test_grpc_with_worker_processes(supervisor: Supervisor, tmp_path: Path) -> None:
    """WORKER_COUNT > 1: each worker serves gRPC on the instance's one port (SO_REUSEPORT),
    as they share its HTTP socket; new connections reach both."""
    write_script(
        tmp_path, "import os\ndef init():\n    pass\ndef run(raw):\n    return [os.getpid()]\n"
    )
    grpc_port = free_port()
    start_server(
        supervisor,
        "oip-grpc-workers",
        code=tmp_path,
        extra=["--grpc-port", str(grpc_port), "--workers", "2"],
    )
    request = pb.ModelInferRequest(model_name="model")
    request.inputs.add(name="x", datatype="FP64", shape=[1, 1]).contents.fp64_contents.append(1)
    pids: set[int] = set()

    def both_answered() -> bool:
        # A connection of its own each time (no shared subchannel): the kernel picks a worker.
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=options) as channel:
            try:
                reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
            except grpc.RpcError as error:  # the other worker's init() may still run
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                return False
        pids.add(struct.unpack("<q", reply.raw_output_contents[0])[0])
        return len(pids) == 2

    wait_until(both_answered, "answers from both worker processes", 30)
