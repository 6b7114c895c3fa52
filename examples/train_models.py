"""Train the example models (scikit-learn's bundled diabetes data; no download).

Writes online/model-1/model/sklearn_regression_model.pkl (ridge regression)
and online/model-2/model/sklearn_regression_model.pkl (a second model for the
green deployment), and the batch sample's model. Run by `make up`; safe to rerun.
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression, Ridge

HERE = Path(__file__).resolve().parent


def main() -> None:
    x, y = load_diabetes(return_X_y=True)
    models = {
        HERE / "online/model-1/model": Ridge(alpha=0.5).fit(x, y),
        HERE / "online/model-2/model": LinearRegression().fit(x, y),
        HERE / "batch/model": Ridge(alpha=0.5).fit(x, y),
    }
    for folder, model in models.items():
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(model, folder / "sklearn_regression_model.pkl")
    sys.stdout.write(f"trained {len(models)} example models\n")


if __name__ == "__main__":
    main()
