"""Built-in scorers for deployments without a scoring script (Azure's "no-code" deployments).

- An MLflow model folder (it has an `MLmodel` file) is loaded with
  `mlflow.pyfunc` (install the `mlflow` extra). Requests use Azure's form
  `{"input_data": {"columns": [...], "index": [...], "data": [[...]]}}` or
  `{"input_data": [[...]]}`, or MLflow's own `dataframe_split`,
  `dataframe_records`, `inputs` and `instances` forms.
- A `.onnx` file runs with onnxruntime (install the `onnx` extra).
- Any other file (`.pkl`, `.pickle`, `.joblib`, ...) is loaded with joblib
  (or pickle when joblib is absent) and must have `predict()`.

Both generic kinds take `{"data": [[...]]}` (or `{"input_data": [[...]]}`)
and answer the list of predictions.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import orjson

from sluice.inference.script import BadInput, ScoringFunctions, ScriptError

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


def _rows(raw: str) -> Any:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"the request body is not JSON: {exc}") from None
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
            self._predict = _onnx_predictor(self.path)
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
        import numpy as np

        rows = np.asarray(_rows(raw_data))
        return self._predict(rows)


def _onnx_predictor(path: Path) -> Any:
    import numpy as np
    import onnxruntime  # type: ignore[import-untyped]

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    dtype = np.float64 if first.type == "tensor(double)" else np.float32

    def predict(rows: Any) -> Any:
        return session.run(None, {first.name: rows.astype(dtype)})[0]

    return predict


class MlflowModel:
    """An MLflow model folder, scored with its pyfunc flavour."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._model: Any = None

    def functions(self) -> ScoringFunctions:
        return ScoringFunctions(init=self.init, run=self.run, origin=f"mlflow: {self.folder}")

    def init(self) -> None:
        try:
            import mlflow.pyfunc
        except ImportError as exc:
            raise ScriptError(
                f"{self.folder} is an MLflow model; install MLflow to serve it without a "
                "scoring script (pip install 'sluice-inference[mlflow]')"
            ) from exc
        self._model = mlflow.pyfunc.load_model(str(self.folder))

    def run(self, raw_data: str) -> Any:
        import pandas as pd  # type: ignore[import-untyped]

        try:
            body = orjson.loads(raw_data)
        except orjson.JSONDecodeError as exc:
            raise BadInput(f"the request body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadInput("the request body must be a JSON object")
        if "input_data" in body:
            data = body["input_data"]
            if isinstance(data, dict) and "data" in data:
                frame = pd.DataFrame(
                    data["data"], columns=data.get("columns"), index=data.get("index")
                )
            else:
                frame = pd.DataFrame(data)
            return self._model.predict(frame)
        return self._model.predict(_mlflow_input(body))


def _mlflow_input(body: dict[str, Any]) -> Any:
    import pandas as pd

    if "dataframe_split" in body:
        split = body["dataframe_split"]
        return pd.DataFrame(split["data"], columns=split.get("columns"), index=split.get("index"))
    if "dataframe_records" in body:
        return pd.DataFrame.from_records(body["dataframe_records"])
    for key in ("inputs", "instances"):
        if key in body:
            import numpy as np

            value = body[key]
            return (
                {k: np.asarray(v) for k, v in value.items()}
                if isinstance(value, dict)
                else (np.asarray(value))
            )
    raise BadInput(
        "the request body needs one of input_data, dataframe_split, dataframe_records, "
        "inputs or instances"
    )
