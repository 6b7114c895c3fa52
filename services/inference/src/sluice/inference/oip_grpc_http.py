"""OIP gRPC as the gateway's reverse bridge sends it: the gRPC message over HTTP/1.1.

Envoy ends the client's HTTP/2 gRPC call itself (`envoy.filters.http.grpc_http1_reverse_bridge`,
traffic/xds/grpc_bridge.py) and posts the request, gRPC frame and all, to `PATH` over the
deployment's HTTP/1.1 cluster: `content-type: application/grpc`, the body one gRPC
message (a flag byte, a 4-byte big-endian length, the serialized ModelInferRequest).
Why: grpc.aio's per-call cost is ~6 times our HTTP/1.1 server's, and the gateway's
gRPC-JSON reverse transcoder, used before, spent ~50 µs of Envoy's CPU per call on proto3
JSON both ways (bench/README.md, oip_grpc); the bridge only moves bytes.

The message becomes the OIP inference of the same tensors (`oip.infer_request`, so the
same checks as REST), run by the very code that serves REST /v2 (batching, metrics,
tracing, data collection); run()'s answer becomes a ModelInferResponse (outputs as
`raw_output_contents`, as Triton answers) in one gRPC frame, to which the bridge adds
the `grpc-status: 0` trailer. A refusal is answered as a gRPC status: a header-only 200
with `grpc-status` and `grpc-message`, which the bridge passes through unchanged (a
"trailers-only" gRPC answer), so the exact status (INVALID_ARGUMENT for a bad tensor,
UNAVAILABLE while not ready...) and message reach the client, and
`x-sluice-not-processed` still lets the gateway retry another instance.

The service's other methods (ServerLive, ServerReady, ModelReady, ServerMetadata,
ModelMetadata: cheap and rare) come the same way, each answered by its REST twin (`GET
/v2/health/live`, ...: `METHODS`), so the gateway needs no second cluster per deployment
for gRPC.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import grpc
import orjson
from google.protobuf.message import DecodeError, Message

from sluice.common.headers import NOT_PROCESSED_HEADER
from sluice.inference import oip, oip_binary
from sluice.inference.http import Header, HttpRequest, Responder
from sluice.v1 import grpc_predict_v2_pb2 as pb

SERVICE = "/inference.GRPCInferenceService/"
PATH = f"{SERVICE}ModelInfer"
GRPC_TYPE: Header = (b"content-type", b"application/grpc")
# grpc-message is percent-encoded (gRPC over HTTP/2): all but printable ASCII, and `%`.
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
M = TypeVar("M", bound=Message)
_FRAME = struct.Struct(">BI")  # compressed flag, message length
# HTTP status of the shared handler -> gRPC status (as Envoy maps its own replies).
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
}
# The InferTensorContents field that holds each datatype's values.
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}  # fmt: skip


class Refused(Exception):
    """The gRPC status and message a call ends with instead of an answer."""

    def __init__(self, code: grpc.StatusCode, message: str, not_processed: bool = False):
        super().__init__(message)
        self.code = code
        self.not_processed = not_processed


def header(headers: list[Header], name: bytes) -> bytes | None:
    """The first value of the (lower-case) header `name`, or None."""
    return next((value for key, value in headers if key == name), None)


def refusal(status: int, headers: list[Header], body: bytes) -> Refused:
    """A REST refusal (`status`, a JSON `error` or `message`) as the gRPC status of the
    same meaning, still retryable elsewhere when it says it was not processed."""
    try:
        parsed = orjson.loads(body)
        message = str(parsed.get("error") or parsed.get("message") or body.decode())
    except (orjson.JSONDecodeError, AttributeError):
        message = body.decode("utf-8", errors="replace")
    code = STATUS_CODES.get(status, grpc.StatusCode.INTERNAL)  # run() failed: 500
    not_processed = header(headers, NOT_PROCESSED_HEADER.encode()) == b"true"
    return Refused(code, message, not_processed)


@dataclass(frozen=True)
class Call:
    """The OIP inference a ModelInfer call stands for."""

    model: str  # "" = the server's own
    version: str
    infer: oip.InferRequest


def message(body: bytes, kind: type[M]) -> M:
    """The message of type `kind` in one uncompressed gRPC frame; Refused otherwise."""
    if len(body) < _FRAME.size:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "the body is not one gRPC message")
    compressed, length = _FRAME.unpack_from(body)
    if compressed:
        raise Refused(grpc.StatusCode.UNIMPLEMENTED, "compressed gRPC messages are not accepted")
    if length != len(body) - _FRAME.size:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "the body is not one gRPC message")
    try:
        return kind.FromString(body[_FRAME.size :])
    except DecodeError as exc:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT, f"not a {kind.DESCRIPTOR.name}: {exc}"
        ) from exc


def parse(body: bytes) -> Call:
    """The call in a bridged request body: Refused when it is no ModelInferRequest, OipError
    when its tensors break the protocol."""
    return call_of(infer_message(body))


def infer_message(body: bytes) -> pb.ModelInferRequest:
    """The ModelInferRequest in a bridged request body; Refused when there is none."""
    return message(body, pb.ModelInferRequest)


def call_of(request: pb.ModelInferRequest) -> Call:
    """The OIP inference a ModelInferRequest stands for; OipError when its tensors break
    the protocol."""
    inputs, raw = request.inputs, request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise oip.OipError(f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs")
    named = [_rows(t, raw[i] if raw else None) for i, t in enumerate(inputs)]
    outputs = tuple(o.name for o in request.outputs)
    infer = oip.infer_request(named, request.id or None, outputs)
    return Call(request.model_name, request.model_version or "1", infer)


def _rows(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> tuple[str, Any]:
    """One input tensor as (name, rows). Its values have their datatype's type already
    (protobuf's typed fields, or decoded from raw bytes): only their number is checked."""
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if raw is not None:
        if datatype not in oip.ALL_TYPES:
            raise oip.OipError(f"input {name!r}: datatype {datatype!r} is not an OIP datatype")
        try:
            flat = oip_binary.decode(datatype, raw, math.prod(shape), name)
        except oip_binary.BinaryError as exc:
            raise oip.OipError(str(exc)) from None
    else:
        field = CONTENTS_FIELDS.get(datatype)
        if field is None:
            raise oip.OipError(
                f"input {name!r}: {datatype or 'no datatype'} values must come in "
                "raw_input_contents"
            )
        flat = list(getattr(tensor.contents, field))
        if field == "bytes_contents":
            flat = [v.decode("utf-8", errors="replace") for v in flat]
    return name, oip.typed_rows(name, shape, flat)


def rest_request(request: pb.ModelInferRequest) -> tuple[dict[str, Any], bytes]:
    """A ModelInferRequest as the REST request of the same tensors: its JSON, and the
    binary data after it (`raw_input_contents`, each input's `binary_data_size`)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise oip.OipError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    inputs: list[dict[str, Any]] = []
    for i, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if raw:
            entry["parameters"] = {"binary_data_size": len(raw[i])}
        else:
            field = CONTENTS_FIELDS.get(tensor.datatype)
            if field is None:
                raise oip.OipError(
                    f"input {tensor.name!r}: {tensor.datatype or 'no datatype'} values must "
                    "come in raw_input_contents"
                )
            values = list(getattr(tensor.contents, field))
            if field == "bytes_contents":
                values = [v.decode("utf-8", errors="replace") for v in values]
            entry["data"] = values
        inputs.append(entry)
    rest: dict[str, Any] = {
        "inputs": inputs,
        "outputs": [{"name": o.name} for o in request.outputs],
    }
    if request.id:
        rest["id"] = request.id
    return rest, b"".join(raw)


def tensors_answer(
    model: str,
    version: str,
    request_id: str | None,
    outputs: list[tuple[str, str, list[int], bytes]],
) -> bytes:
    """Output tensors (name, datatype, shape, raw bytes) as a ModelInferResponse frame."""
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id or "")
    for name, datatype, shape, raw in outputs:
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(raw)
    return frame(response.SerializeToString())


def answer(model: str, call: Call, value: Any) -> bytes:
    """run()'s JSON answer as a ModelInferResponse in one gRPC frame (OipError when it
    lacks an output asked for)."""
    response = pb.ModelInferResponse(
        model_name=model, model_version=call.version, id=call.infer.request_id or ""
    )
    for tensor in oip.response_tensors(value, call.infer):
        datatype = tensor["datatype"]
        response.outputs.add(name=tensor["name"], datatype=datatype, shape=tensor["shape"])
        response.raw_output_contents.append(oip_binary.encode(datatype, tensor["data"]))
    return frame(response.SerializeToString())


@dataclass(frozen=True)
class Method:
    """A method answered by its REST twin: the twin's path for a request, the statuses whose
    JSON answer is still the method's answer (not a refusal), and the answer as a message."""

    request: type[Message]
    rest_path: Callable[[Any], str]
    answers: tuple[int, ...]
    response: Callable[[dict[str, Any]], Message]


def _model_metadata(answer: dict[str, Any]) -> pb.ModelMetadataResponse:
    response = pb.ModelMetadataResponse(
        name=answer["name"], versions=answer["versions"], platform=answer["platform"]
    )
    for tensor in answer["inputs"]:
        response.inputs.add(**tensor)
    for tensor in answer["outputs"]:
        response.outputs.add(**tensor)
    return response


def _segment(model: str) -> str:
    """A model name as one path segment (a `/` in it must not reach another route)."""
    return model.replace("/", "%2F") or "-"


METHODS = {
    f"{SERVICE}ServerLive": Method(
        pb.ServerLiveRequest,
        lambda _: "/v2/health/live",
        (200, 503),
        lambda a: pb.ServerLiveResponse(live=bool(a.get("live"))),
    ),
    f"{SERVICE}ServerReady": Method(
        pb.ServerReadyRequest,
        lambda _: "/v2/health/ready",
        (200, 503),
        lambda a: pb.ServerReadyResponse(ready=bool(a.get("ready"))),
    ),
    f"{SERVICE}ModelReady": Method(
        pb.ModelReadyRequest,
        lambda r: f"/v2/models/{_segment(r.name)}/ready",
        (200, 503),
        lambda a: pb.ModelReadyResponse(ready=bool(a.get("ready"))),
    ),
    f"{SERVICE}ServerMetadata": Method(
        pb.ServerMetadataRequest,
        lambda _: "/v2",
        (200,),
        lambda a: pb.ServerMetadataResponse(
            name=a["name"], version=a["version"], extensions=a["extensions"]
        ),
    ),
    f"{SERVICE}ModelMetadata": Method(
        pb.ModelMetadataRequest,
        lambda r: f"/v2/models/{_segment(r.name)}",
        (200,),
        _model_metadata,
    ),
}


def twin_request(request: HttpRequest) -> tuple[Method, HttpRequest]:
    """The method a bridged call names and its REST twin (a GET with the call's headers);
    Refused for a method the service does not have or a body that is not its request."""
    method = METHODS.get(request.path)
    if method is None:
        name = request.path.removeprefix(SERVICE)
        raise Refused(grpc.StatusCode.UNIMPLEMENTED, f"the inference service has no {name!r}")
    call = message(request.body, method.request)
    path = method.rest_path(call).encode("utf-8")
    return method, HttpRequest("GET", path, request.headers, b"")


def twin_answer(
    method: Method, status: int, headers: list[Header], body: bytes
) -> tuple[int, list[Header], bytes]:
    """The REST twin's answer as the method's: its message in a gRPC frame, or a status."""
    if status not in method.answers:
        return status_answer(refusal(status, headers, body))
    reply = method.response(orjson.loads(body))
    kept = [h for h in headers if h[0] == b"x-request-id"]
    return 200, [GRPC_TYPE, *kept], frame(reply.SerializeToString())


class Captured:
    """Stands in for the connection while a REST twin answers (at once: its routes never
    wait for run())."""

    def __init__(self) -> None:
        self.reply: tuple[int, list[Header], bytes] | None = None

    def respond(
        self, request: HttpRequest, status: int, headers: Iterable[Header], body: bytes
    ) -> None:
        self.reply = (status, list(headers), body)

    def when_gone(self, request: HttpRequest, callback: Callable[[], None]) -> None:
        pass


def frame(data: bytes) -> bytes:
    """One uncompressed gRPC message on the wire."""
    return _FRAME.pack(0, len(data)) + data


def status_answer(refused: Refused) -> tuple[int, list[Header], bytes]:
    """A refusal as a gRPC status the gateway passes through: a header-only 200."""
    headers = [
        GRPC_TYPE,
        (b"grpc-status", str(refused.code.value[0]).encode()),
        (b"grpc-message", quote(str(refused), safe=_MESSAGE_SAFE).encode()),
    ]
    if refused.not_processed:
        headers.append((NOT_PROCESSED_HEADER.encode(), b"true"))
    return 200, headers, b""


class StatusAnswers:
    """Stands in for the client's `Connection` while the call is handled as an OIP
    inference: a 200 (the gRPC answer) goes out as it is, any other answer as the gRPC
    status of the same meaning."""

    def __init__(self, conn: Responder) -> None:
        self._conn = conn

    def respond(
        self, request: HttpRequest, status: int, headers: Iterable[Header], body: bytes
    ) -> None:
        if status == 200:
            self._conn.respond(request, status, headers, body)
        else:
            headers = list(headers)
            self._conn.respond(request, *status_answer(refusal(status, headers, body)))

    def when_gone(self, request: HttpRequest, callback: Callable[[], None]) -> None:
        self._conn.when_gone(request, callback)
