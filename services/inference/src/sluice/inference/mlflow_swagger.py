"""The swagger schemas of an MLflow model served without a scoring script.

Azure's `mlflow_score_script.py` decorates its `run(input_data, params=None)` with
inference_schema types built from a sample of the model's input, output and params,
so `GET /swagger.json` of a no-code deployment describes them. The samples come from:

- the input example, when it is a DataFrame (`{"columns", "data"}` or rows) or
  MLflow's older ndarray form `{"inputs": ...}` (Azure's script fails to read the bare
  value newer MLflow writes and falls back to the signature, so that is done here too);
- otherwise the signature: zeros of each tensor's type and shape (a batch dimension of
  -1 becomes 1), or an empty frame of the ColSpec's columns;
- params: each param's default, else a value of its type.

The schemas are built here as inference_schema builds them (the server does not
depend on that package): `{"type", "items"/"properties", "example"}`, plus `format`
`numpy.ndarray` or `pandas.DataFrame:<orient>`. What has no sample is Azure's
`{"type": "object", "example": {}}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

UNDECLARED: dict[str, Any] = {"type": "object", "example": {}}
# A param without a default is shown with a value of its type, as Azure's script does.
PARAM_SAMPLES = {
    "boolean": True,
    "string": "sample string",
    "integer": 42,
    "long": 42,
    "float": 0.15,
    "double": 0.15,
}


def swagger_schemas(model: Any, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input, output) schemas of `run(input_data, params)` for an `mlflow.models.Model`."""
    signature = model.signature
    data = _example(model, folder)
    if data is None and signature is not None and signature.inputs is not None:
        data = _from_signature(signature.inputs, orient="split")
    params = getattr(signature, "params", None) if signature is not None else None
    output = None
    if signature is not None and signature.outputs is not None:
        output = _from_signature(signature.outputs, orient="records")
    return _run_input(data, _params(params)), output or UNDECLARED


def _run_input(data: dict[str, Any] | None, params: dict[str, Any] | None) -> dict[str, Any]:
    """inference_schema's schema of run()'s arguments: each one's schema under `properties`,
    their examples together under `example`."""
    arguments = {"input_data": data or UNDECLARED, "params": params or UNDECLARED}
    return {
        "type": "object",
        "properties": {k: _without_example(v) for k, v in arguments.items()},
        "example": {k: v["example"] for k, v in arguments.items()},
    }


def _example(model: Any, folder: Path) -> dict[str, Any] | None:
    """The schema of the saved input example, where Azure's script can read it."""
    info = model.saved_input_example_info or {}
    try:
        loaded = json.loads((folder / info["artifact_path"]).read_text())
    except (KeyError, OSError, ValueError):
        return None
    if info.get("type") == "dataframe":
        return _frame(loaded)
    if info.get("type") == "ndarray" and isinstance(loaded, dict) and "inputs" in loaded:
        return _tensors(loaded["inputs"])
    return None


def _frame(loaded: Any) -> dict[str, Any] | None:
    """A DataFrame example as Azure shows it: split orient, with the index pandas gives it."""
    if isinstance(loaded, dict) and "columns" in loaded:
        rows = loaded.get("data", [])
        split = {"columns": loaded["columns"], "index": loaded.get("index"), "data": rows}
    elif isinstance(loaded, list):  # rows without names: pandas numbers the columns
        rows = loaded
        width = len(rows[0]) if rows and isinstance(rows[0], list) else 1
        split = {"columns": list(range(width)), "index": None, "data": rows}
    else:
        return None
    if split["index"] is None:
        split["index"] = list(range(len(rows)))
    return {**_plain(split), "format": "pandas.DataFrame:split"}


def _tensors(value: Any) -> dict[str, Any]:
    """An ndarray example, or a dict of them (named tensors)."""
    import numpy as np

    if isinstance(value, dict):
        return _named({k: np.asarray(v) for k, v in value.items()})
    return _ndarray(np.asarray(value))


def _from_signature(schema: Any, orient: str) -> dict[str, Any] | None:
    """A sample from an MLflow `Schema`: zeros for tensors, an empty frame for columns."""
    import numpy as np

    if not schema.inputs:
        return None
    if schema.is_tensor_spec():
        zeros = [np.zeros(_batch_of_one(spec.shape), spec.type) for spec in schema.inputs]
        if not schema.has_input_names():
            return _ndarray(zeros[0])
        return _named(dict(zip(schema.input_names(), zeros, strict=True)))
    if orient == "records":  # an empty frame's records
        return {**_plain([]), "format": "pandas.DataFrame:records"}
    empty = {"columns": list(schema.input_names()), "index": [], "data": []}
    return {**_plain(empty), "format": "pandas.DataFrame:split"}


def _batch_of_one(shape: Any) -> tuple[int, ...]:
    """A tensor's shape with its variable sizes (-1) as 1, so the example has one item."""
    return tuple(1 if size == -1 else size for size in (shape or ()))


def _params(params: Any) -> dict[str, Any] | None:
    if params is None or not getattr(params, "params", None):
        return None
    sample = {}
    for param in params.params:
        if param.default is not None:
            sample[param.name] = param.default
        elif getattr(param.dtype, "name", None) in PARAM_SAMPLES:
            sample[param.name] = PARAM_SAMPLES[param.dtype.name]
    return _plain(sample)


def _named(arrays: dict[str, Any]) -> dict[str, Any]:
    """Named tensors: an object with one ndarray schema per name."""
    schemas = {name: _ndarray(array) for name, array in arrays.items()}
    return {
        "type": "object",
        "required": list(schemas),
        "properties": {name: _without_example(s) for name, s in schemas.items()},
        "example": {name: s["example"] for name, s in schemas.items()},
    }


def _ndarray(array: Any) -> dict[str, Any]:
    """inference_schema's NumpyParameterType schema: nested arrays of the item type."""
    schema = _item(array.dtype)
    for _ in range(array.ndim):
        schema = {"type": "array", "items": schema}
    return {**schema, "example": array.tolist(), "format": "numpy.ndarray"}


def _item(dtype: Any) -> dict[str, Any]:
    """The schema of one item of a numpy dtype (inference_schema's Dtype2Swagger)."""
    kind, bits = dtype.kind, dtype.itemsize * 8
    if kind == "f":
        return {"type": "number", "format": "float" if bits <= 32 else "double"}
    if kind in "iu":
        return {"type": "integer", "format": f"{'u' if kind == 'u' else ''}int{bits}"}
    if kind == "b":
        return {"type": "boolean"}
    if kind == "U":
        return {"type": "string"}
    if kind in "SV":
        return {"type": "string", "format": "binary"}
    if kind == "M":
        return {"type": "string", "format": "date-time"}
    if kind == "m":
        return {"type": "string", "format": "timedelta"}
    return {"type": "object"}


def _plain(value: Any) -> dict[str, Any]:
    """inference_schema's schema of a JSON value (`handle_standard_types`): a list's items are
    described by its last item, an object's properties are all required."""
    if isinstance(value, bool):
        return {"type": "boolean", "example": value}
    if isinstance(value, int):
        return {"type": "integer", "format": "int64", "example": value}
    if isinstance(value, float):
        return {"type": "number", "format": "double", "example": value}
    if isinstance(value, str):
        return {"type": "string", "example": value}
    if isinstance(value, list):
        items: dict[str, Any] = {"type": "object"}
        for item in value:
            items = _without_example(_plain(item))
        return {"type": "array", "items": items, "example": value}
    if isinstance(value, dict):
        return {
            "type": "object",
            "required": list(value),
            "properties": {k: _without_example(_plain(v)) for k, v in value.items()},
            "example": value,
        }
    return {"type": "object", "example": value}


def _without_example(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "example"}
