"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`.

The instance's own gRPC server, for clients that reach it directly (the gateway bridges
every call of the service to the instance's HTTP server instead, oip_grpc_http.py). Each
call is handed as an HTTP request to the very `InferenceApp.handle` that serves HTTP
(`ModelInfer` -> the bridged `POST /inference.GRPCInferenceService/ModelInfer`,
`ModelMetadata` -> `GET /v2/models/<name>`, ...), so gRPC and REST share one code path:
the instance's secret, model-name check, refusals while not ready or draining, batching,
metrics, tracing and data collection. Call metadata becomes request headers
(`x-sluice-gateway`, `x-request-id`, `traceparent`). An HTTP error status becomes the
matching gRPC status with the JSON message as its details. A refusal made before any
processing carries `x-sluice-not-processed: true` in its trailers.

`grpc.health.v1.Health/Check` answers SERVING once init() has returned and until the
server drains.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import unquote

import grpc
import orjson
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluice.common.headers import NOT_PROCESSED_HEADER
from sluice.inference import oip_grpc_http
from sluice.inference.http import Header, HttpRequest
from sluice.inference.oip_grpc_http import Refused, header, refusal
from sluice.v1 import grpc_predict_v2_pb2 as pb
from sluice.v1 import grpc_predict_v2_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from sluice.inference.app import InferenceApp

M = TypeVar("M", bound=Message)
_STATUS = {code.value[0]: code for code in grpc.StatusCode}


class _Answer:
    """Stands in for `http.Connection`: the handler's one answer, as a future."""

    def __init__(self) -> None:
        self.future: asyncio.Future[tuple[int, list[Header], bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self.gone: Callable[[], None] = lambda: None  # called when the call is cancelled

    def respond(
        self, request: HttpRequest, status: int, headers: Iterable[Header], body: bytes
    ) -> None:
        if not self.future.done():
            self.future.set_result((status, list(headers), body))

    def when_gone(self, request: HttpRequest, callback: Callable[[], None]) -> None:
        self.gone = callback


def _headers(context: grpc.aio.ServicerContext[Any, Any]) -> list[Header]:
    """Call metadata as request headers (binary `-bin` entries are left out)."""
    return [
        (key.encode("latin-1"), value.encode("latin-1"))
        for key, value in context.invocation_metadata() or ()
        if isinstance(value, str) and not key.startswith(":")
    ]


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
        self._app.handle(request, answer)
        try:
            status, reply_headers, reply = await answer.future
        except asyncio.CancelledError:  # the client cancelled or went away
            answer.gone()
            raise
        request_id = header(reply_headers, b"x-request-id")
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

    async def _twin(
        self, context: grpc.aio.ServicerContext[Any, Any], request: Message, kind: type[M]
    ) -> M:
        """A method answered by its REST twin (oip_grpc_http.METHODS), or aborted with the
        twin's refusal."""
        name = request.DESCRIPTOR.name.removesuffix("Request")
        method = oip_grpc_http.METHODS[f"{oip_grpc_http.SERVICE}{name}"]
        status, headers, body = await self._call(context, "GET", method.rest_path(request))
        if status not in method.answers:
            await self._fail(context, refusal(status, headers, body))
        answer = method.response(orjson.loads(body))
        assert isinstance(answer, kind)
        return answer

    async def ServerLive(  # noqa: N802 - the proto's method name
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        return await self._twin(context, request, pb.ServerLiveResponse)

    async def ServerReady(  # noqa: N802 - the proto's method name
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        return await self._twin(context, request, pb.ServerReadyResponse)

    async def ModelReady(  # noqa: N802 - the proto's method name
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        return await self._twin(context, request, pb.ModelReadyResponse)

    async def ServerMetadata(  # noqa: N802 - the proto's method name
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        return await self._twin(context, request, pb.ServerMetadataResponse)

    async def ModelMetadata(  # noqa: N802 - the proto's method name
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        return await self._twin(context, request, pb.ModelMetadataResponse)

    async def ModelInfer(  # noqa: N802 - the proto's method name
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        """As the gateway's bridge sends it (oip_grpc_http.py): the message in a gRPC frame,
        the answer a frame too, or a status in its headers."""
        body = oip_grpc_http.frame(request.SerializeToString())
        extra = [oip_grpc_http.GRPC_TYPE]
        status, headers, reply = await self._call(context, "POST", oip_grpc_http.PATH, body, extra)
        code = header(headers, b"grpc-status")
        if code is not None:
            message = unquote(header(headers, b"grpc-message") or b"")
            not_processed = header(headers, NOT_PROCESSED_HEADER.encode()) == b"true"
            await self._fail(context, Refused(_STATUS[int(code)], message, not_processed))
        if status != 200:  # refused before the bridge's route (the gateway secret)
            await self._fail(context, refusal(status, headers, reply))
        return pb.ModelInferResponse.FromString(reply[5:])


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
