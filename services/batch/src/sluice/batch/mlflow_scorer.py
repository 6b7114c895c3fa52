"""Batch scoring of an MLflow model that comes without a scoring script, as Azure does it.

Each `.csv`, `.parquet` or `.pqt` file is read into a DataFrame and passed to
the pyfunc flavour's `predict()` once; every input row gives one output line
`row,prediction,file` (the row's index in its file, the prediction, the
file's name), which is what Azure's samples read back with
`pd.read_csv(..., names=["row", "prediction", "file"])`. Other file types
fail their mini-batch with a message saying which types work.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from sluice.inference.script import ScoringFunctions

TABULAR = {".csv": "csv", ".parquet": "parquet", ".pqt": "parquet"}


class MlflowBatchScorer:
    def __init__(self, folder: Path):
        if not (folder / "MLmodel").is_file():
            raise RuntimeError(
                f"the deployment has no scoring script and its model {folder} is not an MLflow "
                "model (no MLmodel file): add code_configuration.scoring_script"
            )
        self.folder = folder
        self._model: Any = None

    def functions(self) -> ScoringFunctions:
        return ScoringFunctions(init=self.init, run=self.run, origin=f"mlflow: {self.folder}")

    def init(self) -> None:
        import mlflow.pyfunc

        self._model = mlflow.pyfunc.load_model(str(self.folder))

    def run(self, mini_batch: list[str]) -> list[str]:
        import pandas as pd  # type: ignore[import-untyped]

        lines: list[str] = []
        for name in mini_batch:
            path = Path(name)
            kind = TABULAR.get(path.suffix.lower())
            if kind is None:
                raise ValueError(
                    f"{path.name}: an MLflow model without a scoring script scores "
                    f"{', '.join(TABULAR)} files; add a scoring script for other types"
                )
            frame = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
            predictions = self._model.predict(frame)
            values = (
                predictions.iloc[:, 0].tolist()
                if hasattr(predictions, "iloc") and getattr(predictions, "ndim", 1) == 2
                else list(predictions)
            )
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            for row, value in enumerate(values):
                writer.writerow([row, value, path.name])
            lines.extend(buffer.getvalue().splitlines())
        return lines
