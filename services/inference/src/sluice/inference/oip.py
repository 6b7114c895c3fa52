"""The Open Inference Protocol (v2, REST) in front of the same run().

KServe, Seldon and Triton clients call `POST /v2/models/<name>/infer` with
tensors. The first input tensor becomes the Azure-style body
`{"data": <rows>}` that run() (or a built-in scorer) already understands,
and run()'s answer goes back as one output tensor named `predict`.
Metadata routes: `GET /v2` (server), `GET /v2/models/<name>` (model),
`GET /v2/models/<name>/ready`. `<name>` is the deployment's name
(`AZUREML_DEPLOYMENT_NAME`) or the model file/folder's; `/versions/<v>` is
accepted and ignored (one version per deployment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

SERVER_NAME = "sluice-inference"
PATH_RE = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/.*)?$")
DATATYPES = {bool: "BOOL", int: "INT64", float: "FP64", str: "BYTES"}


class OipError(ValueError):
    """A request that breaks the protocol; answered with 400 and `{"error": ...}`."""


@dataclass(frozen=True)
class OipRoute:
    model: str
    action: str  # "metadata", "ready" or "infer"


def route(path: str) -> OipRoute | None:
    """Which OIP model route `path` is, or None for anything else."""
    match = PATH_RE.match(path)
    if match is None:
        return None
    rest = match.group("rest") or ""
    action = {"": "metadata", "/ready": "ready", "/infer": "infer"}.get(rest)
    return None if action is None else OipRoute(match.group("name"), action)


def _reshape(flat: list[Any], shape: list[int]) -> Any:
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_reshape(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [item for part in value for item in _flatten(part)]
    return [value]


def _shape(value: Any) -> list[int]:
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def request_body(raw: bytes) -> tuple[bytes, str | None]:
    """An OIP inference request -> the `{"data": rows}` body run() takes, and the request id."""
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OipError(f"the body is not JSON: {exc}") from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        raise OipError(
            'an inference request needs "inputs": [{"name", "shape", "datatype", "data"}]'
        )
    tensor = inputs[0]
    data, shape = tensor.get("data"), tensor.get("shape")
    if not isinstance(data, list) or not isinstance(shape, list):
        raise OipError('each input needs "shape" (a list) and "data" (a list)')
    flat = _flatten(data)
    expected = 1
    for dim in shape:
        expected *= int(dim)
    if expected != len(flat):
        raise OipError(
            f"input {tensor.get('name')!r}: shape {shape} needs {expected} values, got {len(flat)}"
        )
    rows = _reshape(flat, [int(d) for d in shape])
    request_id = request.get("id") if isinstance(request.get("id"), str) else None
    return orjson.dumps({"data": rows}), request_id


def response_body(model: str, value: Any, request_id: str | None) -> bytes:
    """run()'s JSON answer as one OIP output tensor named `predict`."""
    if isinstance(value, dict) and len(value) == 1:
        (value,) = value.values()  # {"predictions": [...]} and the like
    if not isinstance(value, list):
        value = [value]
    flat = _flatten(value)
    datatype = DATATYPES.get(type(flat[0]), "BYTES") if flat else "FP64"
    if datatype == "BYTES":
        flat = [v if isinstance(v, str) else orjson.dumps(v).decode() for v in flat]
    body: dict[str, Any] = {
        "model_name": model,
        "outputs": [
            {"name": "predict", "shape": _shape(value), "datatype": datatype, "data": flat}
        ],
    }
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body)


def model_metadata(model: str) -> bytes:
    return orjson.dumps(
        {
            "name": model,
            "versions": ["1"],
            "platform": SERVER_NAME,
            "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, -1]}],
            "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}],
        }
    )


def server_metadata() -> bytes:
    return orjson.dumps({"name": SERVER_NAME, "version": "1", "extensions": []})
