"""Scripts using inference_schema decorators, @rawhttp and AMLResponse, as written for Azure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sluice.common.supervisor import Supervisor
from sluice.inference.swagger import swagger_documents
from sluice.testing.inference import Server, start_server, write_script

pytestmark = pytest.mark.integration  # starts inference server processes

SCHEMA_SCRIPT = """
import numpy as np
from inference_schema.schema_decorators import input_schema, output_schema
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.standard_py_parameter_type import (
    StandardPythonParameterType,
)

def init():
    pass

@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0]])))
@input_schema("scale", StandardPythonParameterType(1.0))
@output_schema(StandardPythonParameterType({"sum": 3.0, "kind": "ndarray"}))
def run(data, scale=2.0):
    return {"sum": float(data.sum()) * scale, "kind": type(data).__name__}
"""

RAW_SCRIPT = """
from azureml.contrib.services.aml_request import AMLRequest, rawhttp
from azureml.contrib.services.aml_response import AMLResponse

def init():
    pass

@rawhttp
def run(request):
    if request.method == "GET":
        return AMLResponse("query " + request.args.get("q", ""), 200)
    seen = request.headers.get("X-Custom", "")
    return AMLResponse(request.get_data(as_text=True).upper(), 202, {"x-seen": seen})
"""

# Azure's "Power BI compatible" sample (how-to-deploy-advanced-entry-script): nested numpy,
# pandas and standard inputs under `Inputs`, optional `GlobalParameters`, `Results` out.
POWER_BI_SCRIPT = """
import numpy as np
import pandas as pd
from inference_schema.schema_decorators import input_schema, output_schema
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType
from inference_schema.parameter_types.standard_py_parameter_type import (
    StandardPythonParameterType,
)

def init():
    pass

numpy_sample_input = NumpyParameterType(np.array([[1, 2, 3], [3, 2, 1]], dtype="float64"))
pandas_sample_input = PandasParameterType(
    pd.DataFrame({"name": ["Sarah", "John"], "age": [25, 26]})
)
standard_sample_input = StandardPythonParameterType(0.0)
sample_input = StandardPythonParameterType(
    {"input1": numpy_sample_input, "input2": pandas_sample_input, "input3": standard_sample_input}
)
sample_global_parameters = StandardPythonParameterType(1.0)
outputs = StandardPythonParameterType({"Results": StandardPythonParameterType([1.0, 1.0])})

@input_schema("Inputs", sample_input)
@input_schema("GlobalParameters", sample_global_parameters, optional=True)
@output_schema(outputs)
def run(Inputs, GlobalParameters=1.0):
    frame = Inputs["input2"]
    return {"Results": [
        type(Inputs["input1"]).__name__, Inputs["input1"].sum() * GlobalParameters,
        type(frame).__name__, frame["age"].sum(), Inputs["input3"],
    ]}
"""

# A pandas frame alone, records orient (inference-schema's default), no GlobalParameters.
PANDAS_SCRIPT = """
import pandas as pd
from inference_schema.schema_decorators import input_schema, output_schema
from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
import numpy as np

def init():
    pass

@input_schema("data", PandasParameterType(pd.DataFrame({"x": [1.0], "label": ["a"]})))
@output_schema(NumpyParameterType(np.array([1.0])))
def run(data):
    return (data["x"] * 2).to_numpy()
"""

# One optional argument: inference_schema converts it only when run() is called by name.
OPTIONAL_SCRIPT = """
import numpy as np
from inference_schema.schema_decorators import input_schema
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType

def init():
    pass

@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0]])), optional=True)
def run(data=None):
    return {"kind": type(data).__name__, "sum": None if data is None else float(np.nansum(data))}
"""

USER_SWAGGER = {"swagger": "2.0", "info": {"title": "mine", "version": "7"}}
USER_OPENAPI = {"openapi": "3.0.1", "info": {"title": "mine", "version": "7"}}


@pytest.fixture(scope="module")
def schema_server(
    module_supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory
) -> Server:
    code = write_script(tmp_path_factory.mktemp("schema"), SCHEMA_SCRIPT)
    return start_server(module_supervisor, "schema", code=code)


@pytest.fixture(scope="module")
def raw_server(module_supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory) -> Server:
    code = write_script(tmp_path_factory.mktemp("raw"), RAW_SCRIPT)
    (code / "swagger.json").write_text(json.dumps(USER_SWAGGER))
    (code / "swagger3.json").write_text(json.dumps(USER_OPENAPI))
    return start_server(module_supervisor, "raw", code=code)


@pytest.fixture(scope="module")
def power_bi_server(
    module_supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory
) -> Server:
    code = write_script(tmp_path_factory.mktemp("powerbi"), POWER_BI_SCRIPT)
    return start_server(module_supervisor, "powerbi", code=code)


@pytest.fixture(scope="module")
def pandas_server(
    module_supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory
) -> Server:
    code = write_script(tmp_path_factory.mktemp("pandas"), PANDAS_SCRIPT)
    return start_server(module_supervisor, "pandas", code=code)


@pytest.fixture(scope="module")
def optional_server(
    module_supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory
) -> Server:
    code = write_script(tmp_path_factory.mktemp("optional"), OPTIONAL_SCRIPT)
    return start_server(module_supervisor, "optional", code=code)


def test_an_optional_argument_is_converted_and_json_is_read_as_azure_reads_it(
    optional_server: Server,
) -> None:
    assert optional_server.post({"data": [[1, 2]]}).json() == {"kind": "ndarray", "sum": 3.0}
    assert optional_server.post({}).json() == {"kind": "NoneType", "sum": None}
    # What Python's json (Azure's parser) takes and orjson does not: NaN, a byte-order mark.
    with_nan = optional_server.post('{"data": [[NaN, 2.0]]}')
    assert with_nan.json() == {"kind": "ndarray", "sum": 2.0}, with_nan.body
    with_bom = optional_server.post(b'\xef\xbb\xbf{"data": [[1, 1]]}')
    assert with_bom.json() == {"kind": "ndarray", "sum": 2.0}, with_bom.body
    assert optional_server.post("{not json").status == 400


def test_decorated_run_gets_parsed_and_converted_arguments(schema_server: Server) -> None:
    reply = schema_server.post({"data": [[1, 2], [3, 4]], "scale": 3})
    assert reply.json() == {"sum": 30.0, "kind": "ndarray"}
    assert schema_server.post({"data": [[1, 2]]}).json() == {"sum": 6.0, "kind": "ndarray"}


def test_decorated_run_with_missing_or_malformed_input_is_400(schema_server: Server) -> None:
    missing = schema_server.post({"scale": 3})
    assert missing.status == 400
    assert "'data'" in missing.json()["message"]
    assert schema_server.post("[1, 2]").status == 400
    assert schema_server.post("not json").status == 400


def test_swagger_is_generated_from_the_schema(schema_server: Server) -> None:
    swagger = schema_server.get("/swagger.json").json()
    assert swagger["swagger"] == "2.0"
    inputs = swagger["definitions"]["ServiceInput"]["properties"]
    assert set(inputs) == {"data", "scale"}
    assert "/score" in swagger["paths"]


def test_rawhttp_run_gets_the_request_and_answers_with_aml_response(raw_server: Server) -> None:
    reply = raw_server.post("hello", headers={"X-Custom": "yes"})
    assert (reply.status, reply.body, reply.headers["x-seen"]) == (202, b"HELLO", "yes")
    assert raw_server.get("/score?q=abc").body == b"query abc"


def test_users_own_swagger_json_is_served(raw_server: Server) -> None:
    assert raw_server.get("/swagger.json").json() == USER_SWAGGER


def test_users_own_openapi3_file_is_served_for_version_3(raw_server: Server) -> None:
    assert raw_server.get("/swagger.json?version=2").json() == USER_SWAGGER
    assert raw_server.get("/swagger.json?version=3").json() == USER_OPENAPI
    assert raw_server.get("/swagger.json?version=3.0").json() == USER_OPENAPI
    generated = raw_server.get("/swagger.json?version=3.1").json()  # no swagger3.1.json
    assert generated["openapi"] == "3.1.0"
    assert generated["components"]["schemas"]["ServiceInput"] == {"type": "object", "example": {}}
    unknown = raw_server.get("/swagger.json?version=4")
    assert unknown.status == 404 and "use 2, 3 or 3.1" in unknown.json()["message"]


def test_nested_numpy_pandas_standard_inputs_with_global_parameters(
    power_bi_server: Server,
) -> None:
    inputs = {
        "input1": [[1, 2, 3], [4, 5, 6]],
        "input2": [{"name": "Ann", "age": 30}, {"name": "Bo", "age": 12}],
        "input3": 7.5,
    }
    reply = power_bi_server.post({"Inputs": inputs, "GlobalParameters": 2.0})
    assert reply.status == 200, reply.body
    assert reply.json() == {"Results": ["ndarray", 42.0, "DataFrame", 42, 7.5]}
    without = power_bi_server.post({"Inputs": inputs})  # GlobalParameters is optional
    assert without.json()["Results"][1] == 21.0
    swagger = power_bi_server.get("/swagger.json?version=3").json()
    schemas = swagger["components"]["schemas"]
    assert set(schemas["ServiceInput"]["properties"]) == {"Inputs", "GlobalParameters"}
    nested = schemas["ServiceInput"]["properties"]["Inputs"]["properties"]
    assert nested["input1"]["type"] == "array" and nested["input2"]["type"] == "array"
    assert schemas["ServiceOutput"]["properties"]["Results"]["type"] == "array"


def test_pandas_frame_without_global_parameters(pandas_server: Server) -> None:
    reply = pandas_server.post({"data": [{"x": 1.5, "label": "a"}, {"x": 2.0, "label": "b"}]})
    assert reply.status == 200, reply.body
    assert reply.json() == [3.0, 4.0]
    swagger = pandas_server.get("/swagger.json").json()
    frame = swagger["definitions"]["ServiceInput"]["properties"]["data"]
    assert frame["type"] == "array" and set(frame["items"]["properties"]) == {"x", "label"}


def test_swagger2_json_is_the_version_2_fallback(tmp_path: Path) -> None:
    (tmp_path / "swagger2.json").write_text(json.dumps(USER_SWAGGER))
    docs = swagger_documents(tmp_path, None)
    assert json.loads(docs.for_query(None) or b"") == USER_SWAGGER
    assert json.loads(docs.for_query("2.0") or b"") == USER_SWAGGER
    assert json.loads(docs.for_query("3") or b"")["openapi"] == "3.0.1"
    assert docs.for_query("latest") is None
    (tmp_path / "swagger.json").write_text(json.dumps({"swagger": "2.0", "first": True}))
    assert json.loads(swagger_documents(tmp_path, None).for_query("2") or b"")["first"] is True
