"""Built-in scorers for deployments without a scoring script (Azure's "no-code" deployments).

- An MLflow model folder (it has an `MLmodel` file) is loaded with
  `mlflow.pyfunc` (install the `mlflow` extra) and scored as Azure's
  `mlflow_score_script.py` scores it: `{"input_data": ..., "params": {...}}`,
  where `input_data` is a pandas split object (`columns`, `index`, `data`), a
  list (an ndarray of the tensor signature's type) or named tensors; MLflow's
  own `dataframe_split`, `dataframe_records`, `inputs` and `instances` forms
  are taken too. The swagger document comes from the signature and example.
- A `.onnx` file runs with onnxruntime (install the `onnx` extra). A Triton model
  repository (`<model>/<version>/model.onnx`) is served by triton.py, which scores
  /score the same way.
- Any other file (`.pkl`, `.pickle`, `.joblib`, ...) is loaded with joblib
  (or pickle when joblib is absent) and must have `predict()`.

Both generic kinds take `{"data": [[...]]}` (or `{"input_data": [[...]]}`)
and answer the list of predictions.
"""

from __future__ import annotations

import inspect
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from sluice.inference.script import BadInput, ScoringFunctions, ScriptError, parse_json

log = structlog.get_logger("sluice.inference.builtin")

MODEL_SUFFIXES = (".onnx", ".pkl", ".pickle", ".joblib", ".sav", ".model")


def builtin_scorer(model: Path) -> ScoringFunctions:
    """The scorer for a model that comes without a scoring script."""
    if model.is_dir() and (model / "MLmodel").is_file():
        return MlflowModel(model).functions()
    if model.is_file() and model.name == "MLmodel":
        return MlflowModel(model.parent).functions()
    return GenericModel(_single_model_file(model)).functions()


def _single_model_file(model: Path) -> Path:
    if model.is_file():
        return model
    if not model.is_dir():
        raise ScriptError(f"model {model} does not exist")
    files = sorted(p for p in model.rglob("*") if p.is_file() and p.suffix in MODEL_SUFFIXES)
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise ScriptError(
            f"without a scoring script the model folder {model} needs an MLmodel file or "
            f"exactly one model file ({', '.join(MODEL_SUFFIXES)}); found: {found}"
        )
    return files[0]


def request_rows(raw: str) -> Any:
    """The rows of a `{"data": [[...], ...]}` (or `{"input_data": ...}`) request body."""
    body = parse_json(raw.encode())
    if isinstance(body, dict):
        for key in ("data", "input_data"):
            if key in body:
                return body[key]
    raise BadInput('the request body must be {"data": [[...], ...]}')


class GenericModel:
    """A pickled estimator with predict(), or an ONNX graph."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._predict: Any = None

    def functions(self) -> ScoringFunctions:
        return ScoringFunctions(
            init=self.init, run=self.run, origin=f"built-in: {self.path}", batchable=True
        )

    def init(self) -> None:
        if self.path.suffix == ".onnx":
            self._predict = onnx_predictor(onnx_session(self.path))
            return
        try:
            import joblib  # type: ignore[import-untyped]

            model = joblib.load(self.path)
        except ImportError:
            with self.path.open("rb") as file:
                model = pickle.load(file)  # noqa: S301 - the deployment's own model file
        if not callable(getattr(model, "predict", None)):
            raise ScriptError(f"{self.path} holds a {type(model).__name__}, which has no predict()")
        self._predict = model.predict

    def run(self, raw_data: str) -> Any:
        return predict_request(self._predict, raw_data)


def predict_request(predict: Any, raw_data: str) -> Any:
    """`predict` of the request's rows (`{"data": [[...], ...]}`) as one array."""
    import numpy as np

    return predict(np.asarray(request_rows(raw_data)))


def onnx_session(path: Path) -> Any:
    """An onnxruntime session of the model file `path`, on the CPU."""
    import onnxruntime  # type: ignore[import-untyped]

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_predictor(session: Any) -> Any:
    """predict(rows) of an onnxruntime session: the rows as its first input (float32, or
    float64 for a double input), its first output as the answer."""
    import numpy as np

    first = session.get_inputs()[0]
    dtype = np.float64 if first.type == "tensor(double)" else np.float32

    def predict(rows: Any) -> Any:
        return session.run(None, {first.name: rows.astype(dtype)})[0]

    return predict


class MlflowModel:
    """An MLflow model folder, scored with its pyfunc flavour as Azure's no-code deployments
    score it (its `mlflow_score_script.py`): the signature decides what `input_data` becomes,
    `params` goes to predict(), and the swagger document describes both."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._model: Any = None
        self._schema: Any = None  # the input signature (an mlflow Schema), if any
        self._inputs = ModelInputs()
        self._takes_params = False
        self._swagger: tuple[Any, Any] | None = None

    def functions(self) -> ScoringFunctions:
        return ScoringFunctions(
            init=self.init, run=self.run, origin=f"mlflow: {self.folder}", swagger=self.swagger
        )

    def init(self) -> None:
        try:
            import mlflow.pyfunc
        except ImportError as exc:
            raise ScriptError(
                f"{self.folder} is an MLflow model; install MLflow to serve it without a "
                "scoring script (pip install 'sluice-inference[mlflow]')"
            ) from exc
        self._model = mlflow.pyfunc.load_model(str(self.folder))
        metadata = self._model.metadata
        self._schema = metadata.get_input_schema()
        self._inputs = ModelInputs.of(self._schema)
        # MLflow before 2.6 has no params; Azure's script then calls predict() without them.
        self._takes_params = "params" in inspect.signature(self._model.predict).parameters
        self._swagger = _swagger_of(metadata, self.folder)

    def swagger(self) -> tuple[Any, Any] | None:
        """The swagger schemas from the model's signature and input example (after init())."""
        return self._swagger

    def run(self, raw_data: str) -> Any:
        body = parse_json(raw_data.encode())
        if not isinstance(body, dict):
            raise BadInput("the request body must be a JSON object")
        params = body.get("params")
        if params is not None and not isinstance(params, dict):
            raise BadInput("params must be a JSON object of the model's parameters")
        if "input_data" in body:
            model_input = _azure_input(body["input_data"], self._inputs)
        else:
            model_input = _mlflow_input(body, self._schema)
        if params is not None and self._takes_params:
            return _jsonable(self._model.predict(model_input, params=params))
        return _jsonable(self._model.predict(model_input))


@dataclass(frozen=True)
class ModelInputs:
    """What the model's input signature says `input_data` becomes."""

    kind: str | None = None  # "tensor", "columns" (ColSpec) or None (no signature)
    dtype: Any = None  # an unnamed tensor's numpy dtype
    dtypes: dict[str, Any] = field(default_factory=dict)  # named tensors' numpy dtypes

    @classmethod
    def of(cls, schema: Any) -> ModelInputs:
        if schema is None or not schema.inputs:
            return cls()
        if not schema.is_tensor_spec():
            return cls("columns")
        types = schema.numpy_types()
        if schema.has_input_names():
            return cls("tensor", dtypes=dict(zip(schema.input_names(), types, strict=True)))
        return cls("tensor", dtype=types[0])


SPLIT = frozenset({"columns", "index", "data"})


def _azure_input(data: Any, inputs: ModelInputs) -> Any:
    """`input_data` as Azure's script reads it: an object with columns, index and data is a
    pandas split frame; a list is an ndarray (of the signature's type for a tensor
    signature, as inference_schema casts it there); another object is named tensors (each
    of its tensor's type). A model whose signature is columns (ColSpec) gets a DataFrame of
    a list or an object too: Azure's script reads only split objects for those, and a
    frame is what such a model takes. A string or number goes to predict() as it is
    (Azure's script passes them on for its LLM flavours)."""
    import numpy as np
    import pandas as pd  # type: ignore[import-untyped]

    try:
        if _is_split_frame(data, inputs):
            return pd.DataFrame(data["data"], columns=data.get("columns"), index=data.get("index"))
        if inputs.kind == "columns" and isinstance(data, list | dict):
            return pd.DataFrame(data)
        if isinstance(data, list):
            return np.asarray(data, dtype=inputs.dtype)
        if isinstance(data, dict):
            return {k: np.asarray(v, dtype=inputs.dtypes.get(k)) for k, v in data.items()}
    except (TypeError, ValueError) as exc:
        raise BadInput(f"input_data does not fit the model's signature: {exc}") from None
    return data


def _is_split_frame(data: Any, inputs: ModelInputs) -> bool:
    """Azure's test is all of columns, index and data. A model without a tensor signature also
    gets a frame from columns and data alone (MLflow's own split form leaves out the index),
    and a ColSpec model from any object with data, as Sluice did before; a tensor model
    keeps Azure's test, so a tensor named "data" stays a tensor."""
    if not isinstance(data, dict) or "data" not in data:
        return False
    if inputs.kind == "tensor":
        return data.keys() >= SPLIT
    return inputs.kind == "columns" or "columns" in data


def _jsonable(result: Any) -> Any:
    """A pandas Series answers as Azure's (and MLflow's) `_get_jsonable_obj(..., "records")`
    answers it: the records of a one-column frame, `[{"0": 1}, ...]` (the series' name as the
    key when it has one). Arrays and frames are left to the server's encoder, which gives
    the same lists and records."""
    import pandas as pd

    if isinstance(result, pd.Series):
        return pd.DataFrame(result).to_dict(orient="records")
    return result


def _swagger_of(metadata: Any, folder: Path) -> tuple[Any, Any] | None:
    """The swagger schemas, or None (the generic ones) when the signature or example is
    one this cannot describe: a model that serves is not refused for its documentation."""
    from sluice.inference.mlflow_swagger import swagger_schemas

    try:
        return swagger_schemas(metadata, folder)
    except Exception as exc:  # any odd signature or example: the model still serves
        log.warning("mlflow_swagger_failed", model=str(folder), error=repr(exc))
        return None


MISSING_INPUT = (
    "A value is not provided for the 'input_data' parameter. "
    "(MLflow's own forms are taken too: dataframe_split, dataframe_records, inputs or instances.)"
)


def _mlflow_input(body: dict[str, Any], schema: Any) -> Any:
    """MLflow's own request forms (`mlflow models serve`), which Azure does not take; `inputs`
    and `instances` are read by MLflow's own parser, which casts them to the signature's
    types as its scoring server does."""
    import pandas as pd

    if "dataframe_split" in body:
        split = body["dataframe_split"]
        return pd.DataFrame(split["data"], columns=split.get("columns"), index=split.get("index"))
    if "dataframe_records" in body:
        return pd.DataFrame.from_records(body["dataframe_records"])
    for key in ("inputs", "instances"):
        if key in body:
            from mlflow.exceptions import MlflowException
            from mlflow.utils.proto_json_utils import parse_tf_serving_input

            try:
                return parse_tf_serving_input(  # type: ignore[no-untyped-call]
                    {key: body[key]}, schema=schema
                )
            except MlflowException as exc:
                raise BadInput(exc.message) from None
    raise BadInput(MISSING_INPUT)
