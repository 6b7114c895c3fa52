"""Batch scoring of an MLflow model that comes without a scoring script, as Azure does it.

Each `.csv`, `.parquet` or `.pqt` file is read into a DataFrame and passed to
the pyfunc flavour's `predict()` once; every input row gives one output line
`row,prediction,file` (the row's index in its file, the prediction, the
file's name), which is what Azure's samples read back with
`pd.read_csv(..., names=["row", "prediction", "file"])`.

Each image (`.png`, `.jpg`, `.jpeg`, `.tiff`, `.bmp`, `.gif`) is decoded into
a numpy array (height x width[ x channels], uint8) and passed to `predict()`
once, as Azure's batch driver does; with a tensor signature the array is
reshaped to the signature's shape (-1 for any size) and cast to its type. An
image gives one line, `prediction,file`; a prediction that is an array is
written as its JSON list.

Other file types fail their mini-batch with a message saying which types work.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from sluice.inference.script import ScoringFunctions

TABULAR = {".csv": "csv", ".parquet": "parquet", ".pqt": "parquet"}
IMAGES = (".png", ".jpg", ".jpeg", ".tiff", ".bmp", ".gif")


class MlflowBatchScorer:
    def __init__(self, folder: Path):
        if not (folder / "MLmodel").is_file():
            raise RuntimeError(
                f"the deployment has no scoring script and its model {folder} is not an MLflow "
                "model (no MLmodel file): add code_configuration.scoring_script"
            )
        self.folder = folder
        self._model: Any = None
        self._tensor: tuple[Any, tuple[int, ...] | None] | None = None  # (dtype, shape)

    def functions(self) -> ScoringFunctions:
        return ScoringFunctions(init=self.init, run=self.run, origin=f"mlflow: {self.folder}")

    def init(self) -> None:
        import mlflow.pyfunc

        self._model = mlflow.pyfunc.load_model(str(self.folder))
        schema = self._model.metadata.get_input_schema()
        if schema is not None and schema.is_tensor_spec() and schema.inputs:
            spec = schema.inputs[0]
            self._tensor = (spec.type, tuple(spec.shape) if spec.shape else None)

    def run(self, mini_batch: list[str]) -> list[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for name in mini_batch:
            path = Path(name)
            suffix = path.suffix.lower()
            if suffix in TABULAR:
                for row, value in enumerate(self._predict_table(path, TABULAR[suffix])):
                    writer.writerow([row, value, path.name])
            elif suffix in IMAGES:
                writer.writerow([_cell(self._predict_image(path)), path.name])
            else:
                raise ValueError(
                    f"{path.name}: an MLflow model without a scoring script scores "
                    f"{', '.join((*TABULAR, *IMAGES))} files; add a scoring script for "
                    "other types"
                )
        return buffer.getvalue().splitlines()

    def _predict_table(self, path: Path, kind: str) -> list[Any]:
        import pandas as pd  # type: ignore[import-untyped]

        frame = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
        predictions = self._model.predict(frame)
        if hasattr(predictions, "iloc") and getattr(predictions, "ndim", 1) == 2:
            return list(predictions.iloc[:, 0].tolist())
        return list(predictions)

    def _predict_image(self, path: Path) -> Any:
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            pixels = np.asarray(image)
        if self._tensor is not None:
            dtype, shape = self._tensor
            if shape is not None:
                try:
                    pixels = pixels.reshape(shape)
                except ValueError as exc:
                    raise ValueError(
                        f"{path.name}: an image of shape {list(pixels.shape)} does not fit the "
                        f"model's tensor signature {list(shape)}"
                    ) from exc
            pixels = pixels.astype(dtype, copy=False)
        predictions = np.asarray(self._model.predict(pixels))  # pandas and lists too
        # One image, one prediction: a batch of one gives its only element, one value a scalar.
        if predictions.ndim >= 1 and predictions.shape[0] == 1:
            predictions = predictions[0]
        return predictions.item() if predictions.size == 1 else predictions


def _cell(value: Any) -> Any:
    """A prediction as one CSV field: arrays and lists as JSON, scalars as they are."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return value
