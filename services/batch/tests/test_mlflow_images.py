"""An MLflow model without a scoring script scores image files, as Azure's batch driver does:
each image decoded to a numpy array, reshaped and cast to a tensor signature when the model
has one, `predict()` once per file, one `prediction,file` line per image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.sklearn
import numpy as np
import pytest
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec
from PIL import Image
from sklearn.base import BaseEstimator

from sluice.batch.mlflow_scorer import MlflowBatchScorer


class MeanPixel(BaseEstimator):  # type: ignore[misc]
    def predict(self, pixels: Any) -> Any:
        assert pixels.dtype == np.float32  # cast to the signature's type
        return pixels.reshape(len(pixels), -1).mean(axis=1)


class Shape(BaseEstimator):  # type: ignore[misc]
    def predict(self, pixels: Any) -> Any:
        return np.array([*pixels.shape, int(pixels.dtype == np.uint8)])


def save(folder: Path, model: Any, signature: ModelSignature | None = None) -> MlflowBatchScorer:
    """The model as an MLflow sklearn model (pyfunc flavour), loaded by the batch scorer.
    Requirements are given: MLflow would otherwise run a process to infer them."""
    example = np.zeros((1, 4, 4, 3), np.float32) if signature else None
    mlflow.sklearn.save_model(
        model, str(folder), signature=signature, input_example=example,
        pip_requirements=["numpy"], serialization_format="cloudpickle",
    )  # fmt: skip
    scorer = MlflowBatchScorer(folder)
    scorer.init()
    return scorer


def image(path: Path, mode: str, size: tuple[int, int], value: int) -> str:
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(path)
    return str(path)


def test_images_reshaped_and_cast_to_a_tensor_signature(tmp_path: Path) -> None:
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 4, 4, 3))]))
    scorer = save(tmp_path / "model", MeanPixel(), signature)
    batch = [
        image(tmp_path / "a.png", "RGB", (4, 4), 10),
        image(tmp_path / "b.jpg", "RGB", (4, 4), 200),
    ]
    lines = scorer.run(batch)
    assert [line.split(",")[1] for line in lines] == ["a.png", "b.jpg"]
    assert float(lines[0].split(",")[0]) == 10.0
    assert abs(float(lines[1].split(",")[0]) - 200.0) < 3  # JPEG is lossy

    wrong = image(tmp_path / "c.png", "RGB", (5, 4), 0)
    with pytest.raises(ValueError, match=r"c.png: an image of shape \[4, 5, 3\] does not fit"):
        scorer.run([wrong])


def test_without_a_signature_the_model_gets_the_decoded_uint8_pixels(tmp_path: Path) -> None:
    scorer = save(tmp_path / "model", Shape())
    batch = [
        image(tmp_path / "g.gif", "L", (5, 3), 7),
        image(tmp_path / "t.tiff", "RGB", (2, 6), 1),
    ]
    # The prediction is an array: written as its JSON list, quoted in the CSV line.
    assert scorer.run(batch) == ['"[3, 5, 1]",g.gif', '"[6, 2, 3, 1]",t.tiff']


def test_other_file_types_are_refused_with_the_types_that_work(tmp_path: Path) -> None:
    scorer = save(tmp_path / "model", Shape())
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes.txt: .* scores .csv, .*\.png.* files"):
        scorer.run([str(tmp_path / "notes.txt")])
