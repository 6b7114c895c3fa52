"""gRPC `ModelInfer` as the gateway's reverse transcoder sends it: proto3 JSON over HTTP/1.1.

Envoy ends gRPC's `inference.GRPCInferenceService/ModelInfer` itself
(`envoy.filters.http.grpc_json_reverse_transcoder`, traffic/xds/grpc_json.py) and posts
the ModelInferRequest as proto3 JSON to `PATH` over the deployment's HTTP/1.1 cluster:
proto field names, int64 values as strings, `bytes` (raw contents, BYTES tensors) in
base64. Why: the gRPC call then costs this server what a REST call costs (grpc.aio's
per-call floor is ~6 times our HTTP/1.1 server's; bench/README.md, oip_grpc).

The request becomes the REST OIP inference of the same tensors (oip_grpc.rest_infer, the
binary extension for raw contents), handled by the very code that serves REST; the REST
answer becomes the ModelInferResponse's proto3 JSON (outputs as raw_output_contents, as
Triton answers), which Envoy encodes as protobuf. A refusal is answered as a gRPC status:
a header-only 200 with `grpc-status` and `grpc-message`, which Envoy passes through
unchanged, so the exact status (INVALID_ARGUMENT for a bad tensor, UNAVAILABLE while not
ready...) and message reach the client, and `x-sluice-not-processed` still lets the
gateway retry another instance.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
import orjson

from sluice.common.headers import NOT_PROCESSED_HEADER
from sluice.inference import oip_binary
from sluice.inference.http import Connection, Header, HttpRequest
from sluice.inference.oip_grpc import Input, Refused, refusal, rest_infer, rest_outputs

PATH = "/v2/grpc/ModelInfer"
JSON_TYPE: Header = (b"content-type", b"application/json")
# grpc-message is percent-encoded (gRPC over HTTP/2): all but printable ASCII, and `%`.
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
_INTEGERS = {"int64_contents", "uint64_contents"}  # strings in proto3 JSON


@dataclass(frozen=True)
class Translated:
    """The REST inference a transcoded ModelInfer stands for."""

    model: str  # "" = the server's own
    version: str
    request: HttpRequest


def _reader(contents: dict[str, Any]) -> Callable[[str], list[Any]]:
    def read(field: str) -> list[Any]:
        values: list[Any] = contents.get(field) or []
        if field in _INTEGERS:
            return [int(v) for v in values]
        if field == "bytes_contents":
            return [base64.b64decode(v, validate=True) for v in values]
        return values

    return read


def rest_request(request: HttpRequest) -> Translated:
    """The REST OIP inference request for a transcoded ModelInfer; Refused when the JSON is
    no ModelInferRequest."""
    try:
        message = orjson.loads(request.body)
        inputs = [
            Input(
                str(t.get("name", "")),
                str(t.get("datatype", "")),
                [int(d) for d in t.get("shape") or []],
                _reader(t.get("contents") or {}),
            )
            for t in message.get("inputs") or []
        ]
        raw = [base64.b64decode(b, validate=True) for b in message.get("raw_input_contents") or []]
        outputs = [str(o.get("name", "")) for o in message.get("outputs") or []]
        body, length = rest_infer(inputs, raw, str(message.get("id", "")), outputs)
        # Values are decoded lazily, while the body is built: their errors land here too.
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError, binascii.Error) as e:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"not a ModelInferRequest: {e}") from e
    model = str(message.get("model_name", ""))
    headers = [(k, v) for k, v in request.headers if k not in (b"content-type", b"content-length")]
    headers.append(JSON_TYPE)
    if length is not None:
        headers.append((oip_binary.HEADER, str(length).encode()))
    rest = HttpRequest("POST", b"", headers, body, request.keep_alive)
    return Translated(model, str(message.get("model_version", "")) or "1", rest)


def status_answer(refused: Refused) -> tuple[int, list[Header], bytes]:
    """A refusal as a gRPC status the gateway passes through: a header-only 200."""
    headers = [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(refused.code.value[0]).encode()),
        (b"grpc-message", quote(str(refused), safe=_MESSAGE_SAFE).encode()),
    ]
    if refused.not_processed:
        headers.append((NOT_PROCESSED_HEADER.encode(), b"true"))
    return 200, headers, b""


def infer_answer(
    status: int, headers: list[Header], body: bytes, version: str
) -> tuple[int, list[Header], bytes]:
    """The REST OIP answer as the transcoder's answer: ModelInferResponse JSON, or a status."""
    if status != 200:
        return status_answer(refusal(status, headers, body))
    answer, outputs = rest_outputs(headers, body)
    response = {
        "model_name": answer.get("model_name", ""),
        "model_version": version,
        "id": answer.get("id", ""),
        "outputs": [
            {"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]} for t, _ in outputs
        ],
        "raw_output_contents": [base64.b64encode(raw).decode("ascii") for _, raw in outputs],
    }
    kept = [(k, v) for k, v in headers if k in (b"x-request-id",)]
    return 200, [JSON_TYPE, *kept], orjson.dumps(response)


class Answering:
    """Stands in for the client's `Connection` while the REST inference is handled: its
    answer goes back to the transcoded request, translated (`respond` is all it uses)."""

    def __init__(self, conn: Connection, original: HttpRequest, version: str) -> None:
        self._conn = conn
        self._original = original
        self._version = version

    def respond(
        self, request: HttpRequest, status: int, headers: Iterable[Header], body: bytes
    ) -> None:
        answer = infer_answer(status, list(headers), body, self._version)
        self._conn.respond(self._original, *answer)
