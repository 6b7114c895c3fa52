"""MLflow models without a scoring script, scored as Azure's `mlflow_score_script.py` scores
them: `input_data` read by the signature (tensors cast to its types, named tensors, split
frames), `params` passed to predict(), a Series answered as records, and the swagger
document built from the signature."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from sluice.common.supervisor import Supervisor
from sluice.inference.builtin import ModelInputs, _azure_input, _jsonable
from sluice.inference.mlflow_swagger import swagger_schemas
from sluice.inference.script import BadInput
from sluice.testing.inference import Server, start_server

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
pytestmark = pytest.mark.skipif(find_spec("mlflow") is None, reason="needs MLflow (dev group)")

# Saved in a process of its own: MLflow warns about every PythonModel class without type
# hints, and the test run stays free of warnings. The classes are pickled by value.
SAVE_MODELS = """
import sys
import numpy as np
import pandas as pd
import mlflow.pyfunc
from mlflow.models import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return {"type": type(model_input).__name__, "dtype": str(model_input.dtype),
                "shape": list(model_input.shape), "params": params}


class Named(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return pd.Series([f"{k}:{v.dtype}:{list(v.shape)}" for k, v in sorted(model_input.items())])


image = Schema([TensorSpec(np.dtype(np.float32), (-1, 2, 2))])
params = ParamSchema([ParamSpec("temperature", "double", 0.5)])
mlflow.pyfunc.save_model(sys.argv[1] + "/image", python_model=Echo(),
                         signature=ModelSignature(inputs=image, params=params),
                         pip_requirements=["numpy"])
pair = Schema([TensorSpec(np.dtype(np.float32), (-1, 2), "a"),
               TensorSpec(np.dtype(np.int32), (-1,), "data")])
mlflow.pyfunc.save_model(sys.argv[1] + "/pair", python_model=Named(),
                         signature=ModelSignature(inputs=pair), pip_requirements=["numpy"])
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mlflow-models")
    subprocess.run(
        [sys.executable, "-c", SAVE_MODELS, str(folder)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return folder


def serve(supervisor: Supervisor, name: str, model: Path) -> Server:
    server = start_server(supervisor, name, model=model, ready=False)
    server.wait_ready(timeout=90)  # importing MLflow takes long on a busy machine
    return server


IMAGE = [[[1, 2], [3, 4]]]  # integers: the signature's float32 is what predict() gets


@pytest.mark.integration
def test_a_tensor_signature_gets_an_ndarray_of_its_type_and_the_params(
    supervisor: Supervisor, models: Path
) -> None:
    server = serve(supervisor, "image", models / "image")
    ndarray = {"type": "ndarray", "dtype": "float32", "shape": [1, 2, 2]}
    reply = server.post({"input_data": IMAGE, "params": {"temperature": 0.9}})
    assert reply.status == 200, reply.body
    assert reply.json() == {**ndarray, "params": {"temperature": 0.9}}
    assert server.post({"input_data": IMAGE}).json() == {**ndarray, "params": {"temperature": 0.5}}
    # MLflow's own form, cast to the signature's type as its scoring server does.
    mlflow_form = server.post({"inputs": IMAGE, "params": {"temperature": 0.1}})
    assert mlflow_form.json() == {**ndarray, "params": {"temperature": 0.1}}

    missing = server.post({"data": IMAGE})
    assert missing.status == 400
    assert "A value is not provided for the 'input_data' parameter" in missing.json()["message"]
    assert server.post({"input_data": [[["x", 1], [2, 3]]]}).status == 400  # not a float

    swagger = server.get("/swagger.json").json()["definitions"]
    floats = {"type": "number", "format": "float"}
    assert swagger["ServiceInput"] == {
        "type": "object",
        "properties": {
            "input_data": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "array", "items": floats}},
                "format": "numpy.ndarray",
            },
            "params": {
                "type": "object",
                "required": ["temperature"],
                "properties": {"temperature": {"type": "number", "format": "double"}},
            },
        },
        "example": {"input_data": [[[0.0, 0.0], [0.0, 0.0]]], "params": {"temperature": 0.5}},
    }
    assert swagger["ServiceOutput"] == {"type": "object", "example": {}}  # no output signature


@pytest.mark.integration
def test_named_tensors_each_of_its_type_and_a_series_answered_as_records(
    supervisor: Supervisor, models: Path
) -> None:
    server = serve(supervisor, "pair", models / "pair")
    # "data" is one of the tensors' names: without columns and index it is not a frame.
    reply = server.post({"input_data": {"a": [[1, 2]], "data": [7]}})
    assert reply.status == 200, reply.body
    assert reply.json() == [{"0": "a:float32:[1, 2]"}, {"0": "data:int32:[1]"}]
    schema = server.get("/swagger.json?version=3").json()["components"]["schemas"]
    named = schema["ServiceInput"]["properties"]["input_data"]
    assert named["required"] == ["a", "data"]
    assert named["properties"]["data"]["items"] == {"type": "integer", "format": "int32"}
    assert schema["ServiceInput"]["example"]["input_data"] == {"a": [[0.0, 0.0]], "data": [0]}


def test_input_data_by_signature() -> None:
    tensor = _azure_input([[1, 2]], ModelInputs("tensor", dtype=np.dtype(np.float32)))
    assert isinstance(tensor, np.ndarray) and tensor.dtype == np.float32
    named = _azure_input({"a": [1], "b": [2]}, ModelInputs("tensor", dtypes={"a": np.int8}))
    assert named["a"].dtype == np.int8 and named["b"].dtype == np.int64
    split = {"columns": ["x"], "index": [5], "data": [[1.5]]}
    for inputs in (ModelInputs(), ModelInputs("columns"), ModelInputs("tensor")):
        frame = _azure_input(split, inputs)
        assert isinstance(frame, pd.DataFrame) and list(frame.index) == [5], inputs
    # Without a signature, as on Azure, a list is an ndarray; a ColSpec model gets frames.
    assert isinstance(_azure_input([[1, 2]], ModelInputs()), np.ndarray)
    assert isinstance(_azure_input([[1, 2]], ModelInputs("columns")), pd.DataFrame)
    no_index = {"columns": ["x"], "data": [[1.5]]}  # MLflow's own split leaves it out
    assert isinstance(_azure_input(no_index, ModelInputs()), pd.DataFrame)
    assert isinstance(_azure_input(no_index, ModelInputs("tensor")), dict)  # Azure's test
    assert _azure_input("a prompt", ModelInputs()) == "a prompt"
    with pytest.raises(BadInput, match="does not fit the model's signature"):
        _azure_input([["x"]], ModelInputs("tensor", dtype=np.dtype(np.float32)))


def test_a_series_is_records_as_azure_answers_it() -> None:
    assert _jsonable(pd.Series([1, 2])) == [{0: 1}, {0: 2}]
    assert _jsonable(pd.Series([1.5], name="y")) == [{"y": 1.5}]
    assert _jsonable([1, 2]) == [1, 2]


def test_swagger_from_columns_params_and_a_dataframe_example(tmp_path: Path) -> None:
    from mlflow.models import Model, ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("double", "x"), ColSpec("string", "s")]),
        outputs=Schema([ColSpec("double")]),
        params=ParamSchema([ParamSpec("k", "long", None), ParamSpec("tag", "string", "v")]),
    )
    input_schema, output_schema = swagger_schemas(Model(signature=signature), tmp_path)
    frame = input_schema["properties"]["input_data"]
    assert frame["format"] == "pandas.DataFrame:split"
    assert frame["required"] == ["columns", "index", "data"]
    assert input_schema["example"] == {
        "input_data": {"columns": ["x", "s"], "index": [], "data": []},
        "params": {"k": 42, "tag": "v"},  # a param without a default: a value of its type
    }
    assert output_schema == {
        "type": "array",
        "items": {"type": "object"},
        "example": [],
        "format": "pandas.DataFrame:records",
    }

    # The input example wins over the signature, as in Azure's script.
    (tmp_path / "input_example.json").write_text(json.dumps({"columns": ["x"], "data": [[2.5]]}))
    model: Any = Model(signature=signature)
    model.saved_input_example_info = {"artifact_path": "input_example.json", "type": "dataframe"}
    input_schema, _ = swagger_schemas(model, tmp_path)
    data = input_schema["example"]["input_data"]
    assert data == {"columns": ["x"], "index": [0], "data": [[2.5]]}
    assert input_schema["properties"]["input_data"]["properties"]["data"]["items"] == {
        "type": "array",
        "items": {"type": "number", "format": "double"},
    }


def test_swagger_without_a_signature_is_azures_generic_one(tmp_path: Path) -> None:
    from mlflow.models import Model

    input_schema, output_schema = swagger_schemas(Model(), tmp_path)
    assert input_schema == {
        "type": "object",
        "properties": {"input_data": {"type": "object"}, "params": {"type": "object"}},
        "example": {"input_data": {}, "params": {}},
    }
    assert output_schema == {"type": "object", "example": {}}
