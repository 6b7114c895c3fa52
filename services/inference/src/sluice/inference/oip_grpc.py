"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`.

Each call is translated into the REST request of the same meaning and handed to
the very `InferenceApp.handle` that serves HTTP (`ModelInfer` -> `POST
/v2/models/<name>/infer` with the binary tensor data extension, `ModelMetadata`
-> `GET /v2/models/<name>`, ...), so gRPC and REST share one code path: the
gateway's secret, model-name check, refusals while not ready or draining,
batching, metrics, tracing and data collection. Call metadata becomes request
headers (`x-sluice-gateway`, `x-request-id`, `traceparent`). The answer is
translated back: tensors always travel as `raw_output_contents` (as Triton
answers), and an HTTP error status becomes the matching gRPC status with the
JSON message as its details. A refusal made before any processing carries
`x-sluice-not-processed: true` in its trailers, which the gateway retries on
another instance as it does for REST.

Envoy health-checks instances with the standard `grpc.health.v1.Health/Check`,
answered SERVING once init() has returned and until the server drains.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluice.common.headers import NOT_PROCESSED_HEADER
from sluice.inference import oip_binary
from sluice.inference.http import Header, HttpRequest
from sluice.v1 import grpc_predict_v2_pb2 as pb
from sluice.v1 import grpc_predict_v2_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from sluice.inference.app import InferenceApp

JSON_TYPE: Header = (b"content-type", b"application/json")
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


class _Answer:
    """Stands in for `http.Connection`: the handler's one answer, as a future."""

    def __init__(self) -> None:
        self.future: asyncio.Future[tuple[int, list[Header], bytes]] = (
            asyncio.get_running_loop().create_future()
        )

    def respond(
        self, request: HttpRequest, status: int, headers: Iterable[Header], body: bytes
    ) -> None:
        if not self.future.done():
            self.future.set_result((status, list(headers), body))


def _headers(context: grpc.aio.ServicerContext[Any, Any]) -> list[Header]:
    """Call metadata as request headers (binary `-bin` entries are left out)."""
    return [
        (key.encode("latin-1"), value.encode("latin-1"))
        for key, value in context.invocation_metadata() or ()
        if isinstance(value, str) and not key.startswith(":")
    ]


def _header(headers: list[Header], name: bytes) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


def refusal(status: int, headers: list[Header], body: bytes) -> Refused:
    try:
        parsed = orjson.loads(body)
        message = str(parsed.get("error") or parsed.get("message") or body.decode())
    except (orjson.JSONDecodeError, AttributeError):
        message = body.decode("utf-8", errors="replace")
    code = STATUS_CODES.get(status, grpc.StatusCode.INTERNAL)  # run() failed: 500
    not_processed = _header(headers, NOT_PROCESSED_HEADER.encode()) == b"true"
    return Refused(code, message, not_processed)


@dataclass(frozen=True)
class Input:
    """One input tensor of a ModelInferRequest, whichever form it came in (protobuf here,
    proto3 JSON in oip_grpc_json.py): `contents(field)` reads one InferTensorContents field."""

    name: str
    datatype: str
    shape: list[int]
    contents: Callable[[str], list[Any]]


def rest_infer(
    inputs: Sequence[Input], raw: Sequence[bytes], request_id: str, outputs: Sequence[str]
) -> tuple[bytes, int | None]:
    """A ModelInferRequest as the REST OIP body: (body, JSON header length when raw bytes
    follow). Every output is asked for in binary, so the answer maps onto raw contents."""
    if raw and len(raw) != len(inputs):
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs",
        )
    entries: list[dict[str, Any]] = []
    for i, tensor in enumerate(inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if raw:
            entry["parameters"] = {"binary_data_size": len(raw[i])}
        else:
            field = CONTENTS_FIELDS.get(tensor.datatype)
            if field is None:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {tensor.name!r}: {tensor.datatype or 'no datatype'} values must "
                    "come in raw_input_contents",
                )
            values = tensor.contents(field)
            if field == "bytes_contents":
                values = [v.decode("utf-8", errors="replace") for v in values]
            entry["data"] = values
        entries.append(entry)
    body: dict[str, Any] = {
        "inputs": entries,
        "parameters": {"binary_data_output": True},
    }
    if request_id:
        body["id"] = request_id
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    header = orjson.dumps(body)
    if not raw:
        return header, None
    return header + b"".join(raw), len(header)


def infer_body(request: pb.ModelInferRequest) -> tuple[bytes, int | None]:
    """A ModelInferRequest (protobuf) as the REST OIP body (see `rest_infer`)."""

    def reader(tensor: pb.ModelInferRequest.InferInputTensor) -> Callable[[str], list[Any]]:
        return lambda field: list(getattr(tensor.contents, field))

    inputs = [Input(t.name, t.datatype, list(t.shape), reader(t)) for t in request.inputs]
    outputs = [o.name for o in request.outputs]
    return rest_infer(inputs, request.raw_input_contents, request.id, outputs)


def rest_outputs(
    headers: list[Header], body: bytes
) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    """The REST OIP answer (JSON header, then every output's raw bytes): the parsed header
    and each output tensor with its raw bytes."""
    length = _header(headers, oip_binary.HEADER)
    size = int(length) if length is not None else len(body)
    answer: dict[str, Any] = orjson.loads(body[:size])
    outputs = []
    at = size
    for tensor in answer.get("outputs", []):
        raw_size = int((tensor.get("parameters") or {}).get("binary_data_size", 0))
        outputs.append((tensor, body[at : at + raw_size]))
        at += raw_size
    return answer, outputs


def infer_response(headers: list[Header], body: bytes, version: str) -> pb.ModelInferResponse:
    """The REST OIP answer as protobuf."""
    answer, outputs = rest_outputs(headers, body)
    response = pb.ModelInferResponse(
        model_name=answer.get("model_name", ""), model_version=version, id=answer.get("id", "")
    )
    for tensor, raw in outputs:
        response.outputs.add(
            name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
        )
        response.raw_output_contents.append(raw)
    return response


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """Each RPC as its REST twin, through `InferenceApp.handle`."""

    def __init__(self, app: InferenceApp) -> None:
        self._app = app

    async def _call(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        path: str,
        body: bytes = b"",
        extra: Iterable[Header] = (),
    ) -> tuple[int, list[Header], bytes]:
        headers = [*_headers(context), *extra]
        request = HttpRequest(method, path.encode("utf-8"), headers, body)
        answer = _Answer()
        self._app.handle(request, answer)  # type: ignore[arg-type]  # respond() is all it uses
        status, reply_headers, reply = await answer.future
        request_id = _header(reply_headers, b"x-request-id")
        if request_id is not None:
            context.set_trailing_metadata((("x-request-id", request_id.decode("latin-1")),))
        return status, reply_headers, reply

    async def _fail(
        self, context: grpc.aio.ServicerContext[Any, Any], refused: Refused
    ) -> NoReturn:
        if refused.not_processed:
            metadata = tuple(context.trailing_metadata() or ())
            context.set_trailing_metadata((*metadata, (NOT_PROCESSED_HEADER, "true")))
        await context.abort(refused.code, str(refused))
        raise AssertionError("abort() raises")

    async def _json(
        self, context: grpc.aio.ServicerContext[Any, Any], path: str, *ok: int
    ) -> dict[str, Any]:
        """GET `path`; its JSON answer when the status is 200 or one of `ok`, else abort."""
        status, headers, body = await self._call(context, "GET", path)
        if status != 200 and status not in ok:
            await self._fail(context, refusal(status, headers, body))
        parsed: dict[str, Any] = orjson.loads(body)
        return parsed

    async def ServerLive(  # noqa: N802 - the proto's method name
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        answer = await self._json(context, "/v2/health/live", 503)
        return pb.ServerLiveResponse(live=bool(answer.get("live")))

    async def ServerReady(  # noqa: N802 - the proto's method name
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        answer = await self._json(context, "/v2/health/ready", 503)
        return pb.ServerReadyResponse(ready=bool(answer.get("ready")))

    async def ModelReady(  # noqa: N802 - the proto's method name
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        answer = await self._json(context, f"/v2/models/{_name(request.name)}/ready", 503)
        return pb.ModelReadyResponse(ready=bool(answer.get("ready")))

    async def ServerMetadata(  # noqa: N802 - the proto's method name
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        answer = await self._json(context, "/v2")
        return pb.ServerMetadataResponse(
            name=answer["name"], version=answer["version"], extensions=answer["extensions"]
        )

    async def ModelMetadata(  # noqa: N802 - the proto's method name
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        answer = await self._json(context, f"/v2/models/{_name(request.name)}")
        response = pb.ModelMetadataResponse(
            name=answer["name"], versions=answer["versions"], platform=answer["platform"]
        )
        for tensor in answer["inputs"]:
            response.inputs.add(**tensor)
        for tensor in answer["outputs"]:
            response.outputs.add(**tensor)
        return response

    async def ModelInfer(  # noqa: N802 - the proto's method name
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        try:
            body, length = infer_body(request)
        except Refused as refused:
            await self._fail(context, refused)
        extra = [JSON_TYPE]
        if length is not None:
            extra.append((oip_binary.HEADER, str(length).encode()))
        path = f"/v2/models/{_name(request.model_name or self._app.model_name)}/infer"
        status, headers, reply = await self._call(context, "POST", path, body, extra)
        if status != 200:
            await self._fail(context, refusal(status, headers, reply))
        return infer_response(headers, reply, request.model_version or "1")


def _name(model: str) -> str:
    """A model name as one path segment (a `/` in it must not reach another route)."""
    return model.replace("/", "%2F") or "-"


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # untyped
    """`grpc.health.v1.Health/Check` for the gateway's health checks: SERVING exactly when
    REST /ready answers 200 (read on each check, so no state to keep in step)."""

    def __init__(self, app: InferenceApp) -> None:
        self._app = app

    async def Check(  # noqa: N802 - the proto's method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        answer = health_pb2.HealthCheckResponse
        return answer(status=answer.SERVING if self._app.ready else answer.NOT_SERVING)


async def start_server(
    app: InferenceApp, host: str, port: int, max_message_bytes: int
) -> grpc.aio.Server:
    """The gRPC server on `host:port`, started. Worker processes of one instance each bind
    the same port (SO_REUSEPORT, gRPC's default on Linux), as they share the HTTP socket."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(app), server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(app), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    server.add_insecure_port(address)
    await server.start()
    return server
