"""The data collector's `response` records are the answers clients got: a 400 for bad input
has one, and an Open Inference Protocol request's is the protocol's answer (run()'s own
answer is its `model_outputs`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sluice.common.collected import read_collected
from sluice.common.supervisor import Supervisor
from sluice.testing.inference import start_server, wait_until, write_script

pytestmark = pytest.mark.integration  # starts an inference server process

SCRIPT = """
import numpy as np
from inference_schema.schema_decorators import input_schema
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType

def init():
    pass

@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0]])))
def run(data):
    return (data * 2).tolist()
"""


def test_every_answer_sent_is_a_response_record(supervisor: Supervisor, tmp_path: Path) -> None:
    collected = tmp_path / "collected"
    server = start_server(
        supervisor,
        "collected",
        code=write_script(tmp_path / "code", SCRIPT),
        extra=["--collect-dir", str(collected), "--collect", "model_outputs,response"],
        scope=("ep", "blue"),
    )
    assert server.post({"data": [[1.0, 2.0]]}, headers={"x-request-id": "good"}).status == 200
    assert server.post({"nodata": 1}, headers={"x-request-id": "bad"}).status == 400
    tensor = {"name": "data", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}
    oip = server.post({"inputs": [tensor]}, path="/v2/models/blue/infer",
                      headers={"x-request-id": "oip"})  # fmt: skip
    assert oip.status == 200

    def records() -> list[dict[str, Any]]:
        return [json.loads(r) for r in read_collected(collected).records]

    wait_until(lambda: len(records()) == 5, "3 responses and 2 model outputs to be written")
    by = {(r["xrequestid"], r["type"].rsplit(".", 1)[-1]): r for r in records()}
    assert by[("bad", "response")]["status"] == 400
    assert "data" in str(by[("bad", "response")]["data"])  # the message naming the argument
    assert by[("oip", "model_outputs")]["data"] == [[2.0, 4.0]]  # what run() answered
    sent = by[("oip", "response")]["data"]
    assert sent == oip.json() and sent["outputs"][0]["data"] == [2.0, 4.0]
    assert by[("good", "response")]["data"] == [[2.0, 4.0]]


CONFIG_SCRIPT = """
import json, os

def init():
    global seen
    path = os.environ.get("AZUREML_MDC_CONFIG_PATH")
    seen = json.load(open(path)) if path else None

def run(data):
    return seen
"""


def test_azures_collector_package_finds_its_collections_enabled(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    """A score.py written for Azure calls `azureml-ai-monitoring`'s Collector, which refuses
    to start unless AZUREML_MDC_CONFIG_PATH's file enables the collection: the server writes
    it for the collections it collects (`runMode: local`, so the package logs instead of
    sending to Azure's sidecar), and only when it collects."""
    code = write_script(tmp_path / "code", CONFIG_SCRIPT)
    collecting = start_server(
        supervisor,
        "mdc",
        code=code,
        extra=[
            "--collect-dir", str(tmp_path / "collected"),
            "--collect", "model_inputs,model_outputs",
            "--collect-sampling-rate", "0.25",
        ],
        scope=("ep", "blue"),
    )  # fmt: skip
    assert collecting.post({"data": 1}).json() == {
        "collections": {
            "model_inputs": {"enabled": True, "sampleRatePercentage": 25.0},
            "model_outputs": {"enabled": True, "sampleRatePercentage": 25.0},
        },
        "runMode": "local",
    }
    plain = start_server(supervisor, "no-mdc", code=code, scope=("ep", "green"))
    assert plain.post({"data": 1}).json() is None
