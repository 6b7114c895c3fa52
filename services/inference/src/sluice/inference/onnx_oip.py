"""An ONNX graph answering the Open Inference Protocol by its own tensor names, as Triton does.

Triton serves an ONNX model under its graph's names: each input tensor of a request
feeds the graph input of the same name, with the graph's datatype and a shape that
fits the graph's (-1: any size); the answer holds the graph outputs the request's
`outputs` names, or all of them when it names none. Tensors travel as JSON `data` or
as raw bytes after the JSON (the binary tensor data extension, `oip_binary.py`): an
output goes back raw when its `parameters.binary_data` says so, else when the
request's `parameters.binary_data_output` does (what tritonclient asks by default).

Here the tensors are numpy arrays from end to end: raw input bytes become arrays
without a Python list in between, and raw outputs are the arrays' bytes. numpy and
onnxruntime are imported only by a server that serves such a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from sluice.inference import oip, oip_binary
from sluice.inference.builtin import onnx_session
from sluice.inference.oip import OipError
from sluice.inference.script import ScriptError

log = structlog.get_logger("sluice.inference.onnx_oip")

PLATFORM = "onnxruntime_onnx"  # what Triton's model metadata says of an ONNX model
# ONNX tensor types -> (OIP datatype, numpy dtype, little-endian as the wire wants it).
TYPES = {
    "tensor(bool)": ("BOOL", "?"),
    "tensor(int8)": ("INT8", "i1"), "tensor(int16)": ("INT16", "<i2"),
    "tensor(int32)": ("INT32", "<i4"), "tensor(int64)": ("INT64", "<i8"),
    "tensor(uint8)": ("UINT8", "u1"), "tensor(uint16)": ("UINT16", "<u2"),
    "tensor(uint32)": ("UINT32", "<u4"), "tensor(uint64)": ("UINT64", "<u8"),
    "tensor(float16)": ("FP16", "<f2"), "tensor(float)": ("FP32", "<f4"),
    "tensor(double)": ("FP64", "<f8"), "tensor(string)": ("BYTES", "O"),
}  # fmt: skip


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as OIP describes it."""

    name: str
    datatype: str
    numpy_type: str
    shape: tuple[int, ...] | None  # -1: any size; None: any shape (the graph does not say)

    def fits(self, dims: list[int]) -> bool:
        if self.shape is None:
            return True
        if len(dims) != len(self.shape):
            return False
        return all(want in (-1, given) for want, given in zip(self.shape, dims, strict=True))

    def metadata(self) -> dict[str, Any]:
        shape = [-1] if self.shape is None else list(self.shape)
        return {"name": self.name, "datatype": self.datatype, "shape": shape}


@dataclass(frozen=True)
class Inference:
    """One inference request, checked against the graph."""

    feeds: dict[str, Any]  # graph input name -> numpy array
    outputs: tuple[str, ...]  # the graph outputs to answer, in the request's order
    binary: frozenset[str]  # the outputs answered as raw bytes
    request_id: str | None


class OnnxGraph:
    """An ONNX model file's onnxruntime session and its tensors (after `load()`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.session: Any = None
        self.inputs: dict[str, TensorSpec] = {}
        self.outputs: dict[str, TensorSpec] = {}

    def load(self) -> None:
        self.session = onnx_session(self.path)
        for arg in self.session.get_inputs():
            spec = _spec(arg)
            if spec is None:
                raise ScriptError(
                    f"{self.path}: input {arg.name!r} is a {arg.type}; Sluice feeds ONNX "
                    f"inputs of the types {', '.join(TYPES)}"
                )
            self.inputs[spec.name] = spec
        for arg in self.session.get_outputs():
            spec = _spec(arg)
            if spec is None:  # a sequence or map (skl2onnx's ZipMap): no OIP tensor for it
                log.warning("onnx_output_left_out", model=str(self.path), output=arg.name)
                continue
            self.outputs[spec.name] = spec

    def run(self, inference: Inference) -> list[Any]:
        """The outputs the request asks for, as numpy arrays (on run()'s thread)."""
        return self.session.run(list(inference.outputs), inference.feeds)  # type: ignore[no-any-return]

    def metadata(self, model: str, version: str) -> bytes:
        """OIP model metadata, as Triton answers `GET /v2/models/<model>`."""
        return orjson.dumps(
            {
                "name": model,
                "versions": [version],
                "platform": PLATFORM,
                "inputs": [spec.metadata() for spec in self.inputs.values()],
                "outputs": [spec.metadata() for spec in self.outputs.values()],
            }
        )

    def decode(self, model: str, raw: bytes, header_length: bytes | None) -> Inference:
        """An OIP inference request (JSON, then binary data when `header_length`, the
        `Inference-Header-Content-Length` header, is given) checked against the graph;
        OipError says what does not fit."""
        tail = b""
        if header_length is not None:
            try:
                raw, tail = oip_binary.split(raw, header_length)
            except oip_binary.BinaryError as exc:
                raise OipError(str(exc)) from None
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise OipError(f"the body is not JSON: {exc}") from None
        return self.checked(model, request, tail)

    def checked(self, model: str, request: Any, tail: bytes = b"") -> Inference:
        """A parsed OIP inference request (and the binary data after its JSON) checked
        against the graph; OipError says what does not fit."""
        inputs = request.get("inputs") if isinstance(request, dict) else None
        if not isinstance(inputs, list):
            raise OipError(
                'an inference request needs "inputs": [{"name", "shape", "datatype", "data"}]'
            )
        feeds = self._feeds(model, inputs, tail)
        outputs, binary = self._outputs_asked(model, request)
        request_id = request.get("id")
        return Inference(
            feeds, outputs, binary, request_id if isinstance(request_id, str) else None
        )

    def _feeds(self, model: str, inputs: list[Any], tail: bytes) -> dict[str, Any]:
        feeds: dict[str, Any] = {}
        at = 0  # where the next input's binary data starts in `tail`
        for tensor in inputs:
            if not isinstance(tensor, dict):
                raise OipError('each input is an object {"name", "shape", "datatype", "data"}')
            name = tensor.get("name")
            spec = self.inputs.get(name) if isinstance(name, str) else None
            if spec is None:
                raise OipError(
                    f"unexpected inference input {name!r} for model {model!r}: "
                    f"its inputs are {list(self.inputs)}"
                )
            if spec.name in feeds:
                raise OipError(f"input {spec.name!r} is given twice")
            dims = _checked_dims(spec, model, tensor)
            params = tensor.get("parameters")
            size = params.get("binary_data_size") if isinstance(params, dict) else None
            if size is None:
                feeds[spec.name] = _json_array(spec, dims, tensor.get("data"))
                continue
            if not isinstance(size, int) or size < 0 or at + size > len(tail):
                raise OipError(
                    f"input {spec.name!r}: binary_data_size {size!r} overruns the binary data"
                )
            feeds[spec.name] = _binary_array(spec, dims, tail, at, size)
            at += size
        if at != len(tail):
            raise OipError(f"{len(tail) - at} bytes of binary data belong to no input")
        missing = [name for name in self.inputs if name not in feeds]
        if missing:
            raise OipError(
                f"model {model!r} needs the inputs {missing} too; the request has {list(feeds)}"
            )
        return feeds

    def _outputs_asked(
        self, model: str, request: dict[str, Any]
    ) -> tuple[tuple[str, ...], frozenset[str]]:
        """The outputs to answer and those to answer as raw bytes."""
        params = request.get("parameters")
        binary_all = isinstance(params, dict) and params.get("binary_data_output") is True
        wanted = request.get("outputs")
        if not wanted:
            names = tuple(self.outputs)
            return names, frozenset(names if binary_all else ())
        if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
            raise OipError('"outputs" is a list of {"name": ...}')
        chosen: list[str] = []
        binary: set[str] = set()
        for output in wanted:
            name = output.get("name")
            if not isinstance(name, str) or name not in self.outputs:
                raise OipError(
                    f"unexpected inference output {name!r} for model {model!r}: "
                    f"its outputs are {list(self.outputs)}"
                )
            params = output.get("parameters")
            params = params if isinstance(params, dict) else {}
            if params.get("classification"):
                raise OipError(
                    f"output {name!r}: classification is not served here; ask for the tensor "
                    "and take its top classes"
                )
            if params.get("binary_data", binary_all) is True:
                binary.add(name)
            if name not in chosen:
                chosen.append(name)
        return tuple(chosen), frozenset(binary)

    def raw_outputs(
        self, inference: Inference, arrays: list[Any]
    ) -> list[tuple[str, str, list[int], bytes]]:
        """The outputs as (name, datatype, shape, raw bytes), as gRPC answers them."""
        return [
            (name, self.outputs[name].datatype, list(array.shape), _raw(self.outputs[name], array))
            for name, array in zip(inference.outputs, arrays, strict=True)
        ]

    def answer(
        self, model: str, version: str, inference: Inference, arrays: list[Any]
    ) -> oip.InferAnswer:
        """The graph's outputs as the OIP answer; those asked in binary as raw bytes after
        the JSON."""
        tensors: list[dict[str, Any]] = []
        raws: list[bytes] = []
        for name, array in zip(inference.outputs, arrays, strict=True):
            spec = self.outputs[name]
            tensor: dict[str, Any] = {
                "name": name,
                "datatype": spec.datatype,
                "shape": list(array.shape),
            }
            if name in inference.binary:
                raw = _raw(spec, array)
                tensor["parameters"] = {"binary_data_size": len(raw)}
                raws.append(raw)
            else:
                tensor["data"] = _json_data(spec, array)
            tensors.append(tensor)
        body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
        if inference.request_id is not None:
            body["id"] = inference.request_id
        header = orjson.dumps(body)
        if not raws:
            return oip.InferAnswer(header)
        return oip.InferAnswer(header + b"".join(raws), len(header))


def _spec(arg: Any) -> TensorSpec | None:
    """An onnxruntime NodeArg as a TensorSpec; None for a type OIP has no datatype for."""
    types = TYPES.get(arg.type)
    if types is None:
        return None
    shape = None
    if arg.shape is not None:  # symbolic or unknown dimensions: any size
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, types[0], types[1], shape)


def _checked_dims(spec: TensorSpec, model: str, tensor: dict[str, Any]) -> list[int]:
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if datatype != spec.datatype:
        raise OipError(
            f"input {spec.name!r}: datatype {datatype!r}, but model {model!r} expects "
            f"{spec.datatype}"
        )
    if not isinstance(shape, list):
        raise OipError(f'input {spec.name!r} needs "shape" (a list)')
    dims = oip.tensor_dims(spec.name, shape)
    if not spec.fits(dims):
        raise OipError(
            f"input {spec.name!r}: shape {dims} does not fit model {model!r}'s "
            f"{spec.metadata()['shape']} (-1: any size)"
        )
    return dims


def _json_array(spec: TensorSpec, dims: list[int], data: Any) -> Any:
    import numpy as np

    if not isinstance(data, list):
        raise OipError(f'input {spec.name!r} needs "data" (a list) or binary data')
    flat = oip.flat_values(data)
    expected = math.prod(dims)
    if len(flat) != expected:
        raise OipError(
            f"input {spec.name!r}: shape {dims} needs {expected} values, got {len(flat)}"
        )
    if not all(oip.fits_datatype(value, spec.datatype) for value in flat):
        raise OipError(f"input {spec.name!r}: data does not fit datatype {spec.datatype}")
    try:
        return np.array(flat, dtype=spec.numpy_type).reshape(dims)
    except (OverflowError, ValueError) as exc:  # e.g. 300 for INT8
        raise OipError(f"input {spec.name!r}: {exc}") from None


def _binary_array(spec: TensorSpec, dims: list[int], tail: bytes, at: int, size: int) -> Any:
    import numpy as np

    count = math.prod(dims)
    if spec.datatype == "BYTES":
        try:
            values = oip_binary.decode("BYTES", tail[at : at + size], count, spec.name)
        except oip_binary.BinaryError as exc:
            raise OipError(str(exc)) from None
        return np.array(values, dtype=object).reshape(dims)
    dtype = np.dtype(spec.numpy_type)
    if size != count * dtype.itemsize:
        raise OipError(
            f"input {spec.name!r}: shape {dims} needs {count * dtype.itemsize} bytes of "
            f"{spec.datatype}, binary_data_size is {size}"
        )
    array = np.frombuffer(tail, dtype, count, at).reshape(dims)
    # The tensor starts wherever the JSON header ends: give onnxruntime aligned memory, as
    # the arrays numpy makes itself are.
    return array if array.flags.aligned else array.copy()


def _raw(spec: TensorSpec, array: Any) -> bytes:
    import numpy as np

    if spec.datatype == "BYTES":
        return oip_binary.encode("BYTES", array.ravel().tolist())
    return np.ascontiguousarray(array, dtype=spec.numpy_type).tobytes()


def _json_data(spec: TensorSpec, array: Any) -> list[Any]:
    flat: list[Any] = array.ravel().tolist()
    if spec.datatype == "BYTES":
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in flat]
    return flat
