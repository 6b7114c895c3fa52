"""Scripts using inference_schema decorators, @rawhttp and AMLResponse, as written for Azure."""

from __future__ import annotations

import json

import pytest

from sluice.common.supervisor import Supervisor
from sluice.inference.testing import Server, start_server, write_script

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

USER_SWAGGER = {"swagger": "2.0", "info": {"title": "mine", "version": "7"}}


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
    return start_server(module_supervisor, "raw", code=code)


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
