"""The Open Inference Protocol (v2, REST) in front of the same run().

KServe, Seldon and Triton clients call `POST /v2/models/<name>/infer` with
tensors. One input tensor becomes the Azure-style body `{"data": <rows>}`
that run() (or a built-in scorer) already understands; several become
`{"<input name>": <rows>, ...}` (the keyword arguments of an
`inference_schema` run(), or MLflow's named tensors). Each tensor's data must
fit its shape and datatype. run()'s answer goes back as one output tensor
`predict`, or, when it is an object, one output per key (filtered by the
request's `outputs`, if given). Model metadata comes from an MLflow model's
signature when there is one. Tensors may travel as raw bytes after the JSON
(the binary tensor data extension, `oip_binary.py`), both ways.
Metadata routes: `GET /v2` (server), `GET /v2/models/<name>` (model),
`GET /v2/models/<name>/ready`. `<name>` is the deployment's name
(`AZUREML_DEPLOYMENT_NAME`) or the model file/folder's; `/versions/<v>` is
accepted and ignored (one version per deployment). A Triton repository's ONNX
model answers under its own name by its graph's tensors instead (triton.py,
onnx_oip.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from sluice.inference import oip_binary
from sluice.inference.oip_binary import BinaryError

SERVER_NAME = "sluice-inference"
PATH_RE = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/.*)?$")
DATATYPES = {bool: "BOOL", int: "INT64", float: "FP64", str: "BYTES"}
# The protocol's datatypes, by the Python values their JSON data holds.
INTEGER_TYPES = {f"{sign}INT{bits}" for sign in ("", "U") for bits in (8, 16, 32, 64)}
FLOAT_TYPES = {"FP16", "FP32", "FP64", "BF16"}
ALL_TYPES = INTEGER_TYPES | FLOAT_TYPES | {"BOOL", "BYTES"}


class OipError(ValueError):
    """A request that breaks the protocol; answered with 400 and `{"error": ...}`."""


@dataclass(frozen=True)
class OipRoute:
    model: str
    action: str  # "metadata", "ready" or "infer"


def version_of(path: str) -> str | None:
    """The version an OIP model route names (`/versions/<v>`), or None."""
    match = PATH_RE.match(path)
    return match.group("version") if match is not None else None


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


def flat_values(value: Any) -> list[Any]:
    """Nested lists' values in row-major order."""
    if isinstance(value, list):
        return [item for part in value for item in flat_values(part)]
    return [value]


def _shape(value: Any) -> list[int]:
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _tensor_rows(tensor: Any) -> Any:
    """One input tensor's data, checked against its shape and datatype, as nested rows."""
    if not isinstance(tensor, dict):
        raise OipError('each input is an object {"name", "shape", "datatype", "data"}')
    name, data, shape = tensor.get("name"), tensor.get("data"), tensor.get("shape")
    datatype = tensor.get("datatype")
    if not isinstance(name, str) or not name:
        raise OipError('each input needs a "name"')
    if not isinstance(data, list) or not isinstance(shape, list):
        raise OipError(f'input {name!r} needs "shape" (a list) and "data" (a list)')
    if datatype not in ALL_TYPES:
        raise OipError(f"input {name!r}: datatype {datatype!r} is not one of {sorted(ALL_TYPES)}")
    dims = tensor_dims(name, shape)
    flat = flat_values(data)
    expected = math.prod(dims)
    if expected != len(flat):
        raise OipError(f"input {name!r}: shape {shape} needs {expected} values, got {len(flat)}")
    if not all(fits_datatype(value, datatype) for value in flat):
        raise OipError(f"input {name!r}: data does not fit datatype {datatype}")
    return _reshape(flat, dims)


def tensor_dims(name: Any, shape: list[Any]) -> list[int]:
    """A tensor's shape as sizes; OipError unless every one is a whole number >= 0."""
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise OipError(f"input {name!r}: shape {shape} is not a list of sizes (integers >= 0)")
    return list(shape)


def fits_datatype(value: Any, datatype: str) -> bool:
    """Whether a JSON value is one of `datatype`'s values."""
    if datatype == "BOOL":
        return isinstance(value, bool)
    if datatype == "BYTES":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    if datatype in INTEGER_TYPES:
        return isinstance(value, int) and (value >= 0 or not datatype.startswith("U"))
    return isinstance(value, int | float)


@dataclass(frozen=True)
class InferRequest:
    body: bytes  # what run() gets, as if POSTed to /score
    request_id: str | None
    outputs: tuple[str, ...]  # the output names asked for; empty = all
    binary_all: bool = False  # `parameters.binary_data_output`: every output as raw bytes
    binary_outputs: frozenset[str] = frozenset()  # outputs asked for with `binary_data`


def _binary_inputs(inputs: list[Any], tail: bytes) -> None:
    """Fill the `data` of each input sent as raw bytes (`binary_data_size`) from `tail`."""
    at = 0
    for tensor in inputs:
        params = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            continue
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        if not isinstance(size, int) or size < 0 or at + size > len(tail):
            raise OipError(f"input {name!r}: binary_data_size {size!r} overruns the binary data")
        if datatype not in ALL_TYPES or not isinstance(shape, list):
            raise OipError(f'input {name!r} needs "shape" and a datatype of {sorted(ALL_TYPES)}')
        count = math.prod(tensor_dims(name, shape))
        try:
            tensor["data"] = oip_binary.decode(datatype, tail[at : at + size], count, str(name))
        except BinaryError as exc:
            raise OipError(str(exc)) from None
        at += size
    if at != len(tail):
        raise OipError(f"{len(tail) - at} bytes of binary data belong to no input")


def request_body(raw: bytes, header_length: bytes | None = None) -> InferRequest:
    """An OIP inference request -> the body run() takes, its id and the outputs asked for.

    `header_length` is the `Inference-Header-Content-Length` header, when given: the
    body is then that many bytes of JSON followed by the inputs' binary data.
    """
    tail = b""
    if header_length is not None:
        try:
            raw, tail = oip_binary.split(raw, header_length)
        except BinaryError as exc:
            raise OipError(str(exc)) from None
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OipError(f"the body is not JSON: {exc}") from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise OipError(
            'an inference request needs "inputs": [{"name", "shape", "datatype", "data"}]'
        )
    _binary_inputs(inputs, tail)
    wanted = request.get("outputs") or []
    if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
        raise OipError('"outputs" is a list of {"name": ...}')
    request_id = request.get("id") if isinstance(request.get("id"), str) else None
    params = request.get("parameters")
    binary_all = isinstance(params, dict) and params.get("binary_data_output") is True
    binary = frozenset(
        str(o.get("name"))
        for o in wanted
        if isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data") is True
    )
    outputs = tuple(str(o.get("name")) for o in wanted)
    named: list[tuple[Any, Any]] = []
    for tensor in inputs:
        rows = _tensor_rows(tensor)  # checks first that the input is an object
        named.append((tensor["name"], rows))
    return infer_request(named, request_id, outputs, binary_all, binary)


def typed_rows(name: str, shape: list[int], flat: list[Any]) -> Any:
    """Values that already have their datatype's Python type (decoded from protobuf or raw
    bytes) as nested rows: only their number is checked against the shape."""
    expected = math.prod(shape)
    if expected != len(flat):
        raise OipError(f"input {name!r}: shape {shape} needs {expected} values, got {len(flat)}")
    return _reshape(flat, shape)


def infer_request(
    named_rows: list[tuple[Any, Any]],
    request_id: str | None,
    outputs: tuple[str, ...] = (),
    binary_all: bool = False,
    binary: frozenset[str] = frozenset(),
) -> InferRequest:
    """Input tensors as (name, rows), as the request for run(): `{"data": rows}` for one,
    `{name: rows, ...}` for several."""
    if not named_rows:
        raise OipError("an inference request needs at least one input tensor")
    rows = dict(named_rows)
    if len(rows) != len(named_rows):
        raise OipError("input names must be unique")
    body = {"data": next(iter(rows.values()))} if len(rows) == 1 else rows
    return InferRequest(orjson.dumps(body), request_id, outputs, binary_all, binary)


def _output(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, list):
        value = [value]
    flat = flat_values(value)
    kinds = {type(v) for v in flat}
    if kinds <= {int, float} and float in kinds:
        datatype = "FP64"
    else:
        datatype = DATATYPES.get(type(flat[0]), "BYTES") if flat else "FP64"
    if datatype == "BYTES":
        flat = [v if isinstance(v, str) else orjson.dumps(v).decode() for v in flat]
    return {"name": name, "shape": _shape(value), "datatype": datatype, "data": flat}


@dataclass(frozen=True)
class InferAnswer:
    body: bytes
    header_length: int | None = None  # set when binary tensor data follows the JSON


def response_tensors(value: Any, request: InferRequest) -> list[dict[str, Any]]:
    """run()'s JSON answer as OIP output tensors `{"name", "shape", "datatype", "data"}`
    (data flat): `predict`, or one per key of an object, filtered by the outputs asked for."""
    named = value if isinstance(value, dict) and value else {"predict": value}
    wanted = request.outputs
    if wanted:
        missing = [n for n in wanted if n not in named]
        if missing:
            raise OipError(f"run() has no output {missing[0]!r}; it answers {sorted(named)}")
        named = {n: named[n] for n in wanted}
    return [_output(str(name), v) for name, v in named.items()]


def response_body(model: str, value: Any, request: InferRequest) -> InferAnswer:
    """run()'s JSON answer as the REST OIP answer; the outputs the request asked for in
    binary go as raw bytes after the JSON."""
    outputs = response_tensors(value, request)
    binary: list[bytes] = []
    for tensor in outputs:
        if request.binary_all or tensor["name"] in request.binary_outputs:
            raw = oip_binary.encode(tensor["datatype"], tensor.pop("data"))
            tensor["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
    body: dict[str, Any] = {"model_name": model, "outputs": outputs}
    if request.request_id is not None:
        body["id"] = request.request_id
    header = orjson.dumps(body)
    if not binary:
        return InferAnswer(header)
    return InferAnswer(header + b"".join(binary), len(header))


# MLflow signature types -> OIP datatypes (column specs, then tensor dtypes).
MLFLOW_TYPES = {
    "double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32",
    "boolean": "BOOL", "string": "BYTES", "binary": "BYTES", "datetime": "BYTES",
    "float64": "FP64", "float32": "FP32", "float16": "FP16", "int64": "INT64",
    "int32": "INT32", "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "uint16": "UINT16",
    "uint32": "UINT32", "uint64": "UINT64", "bool": "BOOL", "object": "BYTES", "str": "BYTES",
}  # fmt: skip
UNKNOWN_INPUTS = [{"name": "input-0", "datatype": "FP64", "shape": [-1, -1]}]
UNKNOWN_OUTPUTS = [{"name": "predict", "datatype": "FP64", "shape": [-1]}]


def _signature_tensors(spec: str | None, prefix: str) -> list[dict[str, Any]] | None:
    """An MLflow signature half (a JSON list of column or tensor specs) as OIP tensors."""
    if not spec:
        return None
    try:
        entries = orjson.loads(spec)
    except orjson.JSONDecodeError:
        return None
    tensors = []
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        name = str(entry.get("name") or f"{prefix}-{i}")
        if entry.get("type") == "tensor":
            tensor = entry.get("tensor-spec") or {}
            datatype = MLFLOW_TYPES.get(str(tensor.get("dtype")), "BYTES")
            shape = [int(d) for d in tensor.get("shape") or [-1]]
        else:
            datatype, shape = MLFLOW_TYPES.get(str(entry.get("type")), "BYTES"), [-1]
        tensors.append({"name": name, "datatype": datatype, "shape": shape})
    return tensors or None


def mlflow_signature(model: Path | None) -> tuple[list[Any] | None, list[Any] | None]:
    """(inputs, outputs) from an MLflow model folder's `MLmodel` signature, where it has one."""
    mlmodel = None
    if model is not None:
        mlmodel = model / "MLmodel" if model.is_dir() else model.parent / "MLmodel"
    if mlmodel is None or not mlmodel.is_file():
        return None, None
    try:
        signature = (yaml.safe_load(mlmodel.read_text()) or {}).get("signature") or {}
    except yaml.YAMLError:
        return None, None
    return (
        _signature_tensors(signature.get("inputs"), "input"),
        _signature_tensors(signature.get("outputs"), "output"),
    )


def model_metadata(model: str, model_path: Path | None = None) -> bytes:
    inputs, outputs = mlflow_signature(model_path)
    return orjson.dumps(
        {
            "name": model,
            "versions": ["1"],
            "platform": SERVER_NAME,
            "inputs": inputs or UNKNOWN_INPUTS,
            "outputs": outputs or UNKNOWN_OUTPUTS,
        }
    )


def server_metadata() -> bytes:
    return orjson.dumps({"name": SERVER_NAME, "version": "1", "extensions": ["binary_tensor_data"]})
