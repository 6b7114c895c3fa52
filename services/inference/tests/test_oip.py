"""The Open Inference Protocol (v2 REST) around the same run(): KServe/Triton clients work."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.common.supervisor import Supervisor
from sluice.inference.testing import start_server, write_script

pytestmark = pytest.mark.integration  # starts inference server processes

SCRIPT = """
import json

def init():
    pass

def run(raw):
    rows = json.loads(raw)["data"]
    return [sum(row) for row in rows]
"""


def test_infer_metadata_and_errors(supervisor: Supervisor, tmp_path: Path) -> None:
    write_script(tmp_path, SCRIPT)
    (tmp_path / "summer.pkl").write_bytes(b"unused")
    server = start_server(supervisor, "oip", code=tmp_path, model=tmp_path / "summer.pkl")
    assert server.get("/v2").json()["name"] == "sluice-inference"
    assert server.get("/v2/models/summer").json()["name"] == "summer"
    assert server.get("/v2/models/summer/ready").status == 200

    request = {
        "id": "req-1",
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]}],
    }
    reply = server.post(request, path="/v2/models/summer/infer")
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["model_name"] == "summer" and body["id"] == "req-1"
    assert body["outputs"] == [
        {"name": "predict", "shape": [2], "datatype": "INT64", "data": [6, 15]}
    ]
    # Nested data and a version segment work too.
    nested = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [[0.5, 0.25]]}]}
    reply = server.post(nested, path="/v2/models/summer/versions/1/infer")
    assert reply.json()["outputs"][0]["data"] == [0.75]

    wrong_shape = {
        "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3]}]
    }
    reply = server.post(wrong_shape, path="/v2/models/summer/infer")
    assert reply.status == 400 and "needs 4 values, got 3" in reply.json()["error"]
    assert server.post({"inputs": []}, path="/v2/models/summer/infer").status == 400
    assert server.post(request, path="/v2/models/other/infer").status == 404
