"""Which model folders are Triton repositories, and which of their models Sluice serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.inference.script import ScriptError
from sluice.inference.triton import top_level_fields, triton_model

CONFIG = """
name: "model_1"   # the folder's name
platform: "onnxruntime_onnx"
max_batch_size : 8
input [
  { name: "data_0"  data_type: TYPE_FP32  dims: [ 3, 224, 224 ] }
]
output { name: "fc6_1" data_type: TYPE_FP32 dims: [ 1000 ] }
parameters { key: "note" value: { string_value: "a } in a string" } }
default_model_filename: 'weights.onnx'
"""


def files(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def test_only_top_level_config_fields_are_read() -> None:
    assert top_level_fields(CONFIG) == {
        "name": "model_1",
        "platform": "onnxruntime_onnx",
        "max_batch_size": "8",
        "default_model_filename": "weights.onnx",
    }


def test_a_repository_or_the_model_folder_names_the_model(tmp_path: Path) -> None:
    repository = files(tmp_path / "models", "model_1/1/model.onnx", "model_1/3/model.onnx")
    for path in (repository, repository / "model_1"):
        model = triton_model(path)
        assert model is not None
        assert (model.name, model.version) == ("model_1", "3")  # Triton's latest version
        assert model.onnx == repository / "model_1" / "3" / "model.onnx"


def test_config_may_name_the_model_file_and_onnx_may_be_a_folder(tmp_path: Path) -> None:
    named = files(tmp_path / "a", "m/1/weights.onnx")
    (named / "m" / "config.pbtxt").write_text(CONFIG)
    model = triton_model(named)
    assert model is not None and model.onnx.name == "weights.onnx"
    external = files(tmp_path / "b", "m/2/model.onnx/model.onnx", "m/2/model.onnx/weights.bin")
    model = triton_model(external)
    assert model is not None and model.onnx == external / "m/2/model.onnx/model.onnx"


def test_other_folders_are_not_triton_repositories(tmp_path: Path) -> None:
    assert triton_model(None) is None
    assert triton_model(files(tmp_path / "file", "model.onnx") / "model.onnx") is None
    assert triton_model(files(tmp_path / "plain", "model.onnx", "extra/notes.txt")) is None
    assert triton_model(files(tmp_path / "pickle", "1/model.pkl")) is None
    assert triton_model(files(tmp_path / "mlflow", "MLmodel", "1/model.onnx")) is None


@pytest.mark.parametrize(
    ("names", "says"),
    [
        (["a/1/model.onnx", "b/config.pbtxt"], "holds 2 models (a, b)"),
        (["m/2/model.savedmodel/saved_model.pb"], "is a TensorFlow SavedModel"),
        (["m/config.pbtxt"], "has no numbered version folder"),
        (["m/config.pbtxt", "m/1/notes.txt"], "version 1 has no model.onnx"),
    ],
)
def test_what_sluice_does_not_serve_says_so(tmp_path: Path, names: list[str], says: str) -> None:
    with pytest.raises(ScriptError, match="Sluice serves a Triton repository") as refused:
        triton_model(files(tmp_path / "models", *names))
    assert says in str(refused.value)
