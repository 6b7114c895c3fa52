"""The Open Inference Protocol (v2 REST) around the same run(): KServe/Triton clients work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sluice.common.supervisor import Supervisor
from sluice.testing.inference import start_server, write_script

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
    # Inputs that are not tensor objects, and shapes that are not sizes, say so (they were the
    # parser's "malformed HTTP request", logged nowhere).
    for bad, says in (
        ({"inputs": [1]}, "each input is an object"),
        ({"inputs": [{**request["inputs"][0], "shape": ["a", 3]}]}, "is not a list of sizes"),
        ({"inputs": [{**request["inputs"][0], "shape": [None, 3]}]}, "is not a list of sizes"),
    ):
        reply = server.post(bad, path="/v2/models/summer/infer")
        assert reply.status == 400 and says in reply.json()["error"], reply.body


MULTI = """
import json

def init():
    pass

def run(raw):
    body = json.loads(raw)
    total = [a + b for a, b in zip(body["a"], body["b"])]
    return {"total": total, "label": ["big" if t > 5 else "small" for t in total], "n": len(total)}
"""


def test_several_inputs_and_outputs_with_datatypes(supervisor: Supervisor, tmp_path: Path) -> None:
    write_script(tmp_path, MULTI)
    (tmp_path / "pair.pkl").write_bytes(b"unused")
    server = start_server(supervisor, "oip-multi", code=tmp_path, model=tmp_path / "pair.pkl")
    request = {
        "inputs": [
            {"name": "a", "shape": [3], "datatype": "INT32", "data": [1, 2, 3]},
            {"name": "b", "shape": [3], "datatype": "FP32", "data": [0.5, 4.5, 9]},
        ]
    }
    reply = server.post(request, path="/v2/models/pair/infer")
    assert reply.status == 200, reply.body
    assert reply.json()["outputs"] == [
        {"name": "total", "shape": [3], "datatype": "FP64", "data": [1.5, 6.5, 12]},
        {"name": "label", "shape": [3], "datatype": "BYTES", "data": ["small", "big", "big"]},
        {"name": "n", "shape": [1], "datatype": "INT64", "data": [3]},
    ]
    only = server.post({**request, "outputs": [{"name": "label"}]}, path="/v2/models/pair/infer")
    assert [o["name"] for o in only.json()["outputs"]] == ["label"]
    absent = server.post({**request, "outputs": [{"name": "nope"}]}, path="/v2/models/pair/infer")
    assert absent.status == 400 and "no output 'nope'" in absent.json()["error"]
    for bad, message in (
        ({"name": "a", "shape": [1], "datatype": "INT32", "data": [1.5]}, "does not fit"),
        ({"name": "a", "shape": [1], "datatype": "UINT8", "data": [-1]}, "does not fit"),
        ({"name": "a", "shape": [1], "datatype": "FP99", "data": [1]}, "is not one of"),
        ({"name": "a", "shape": [1], "datatype": "BOOL", "data": [1]}, "does not fit"),
    ):
        reply = server.post({"inputs": [bad]}, path="/v2/models/pair/infer")
        assert reply.status == 400 and message in reply.json()["error"], bad


def test_metadata_from_an_mlflow_signature(tmp_path: Path) -> None:
    from sluice.inference.oip import mlflow_signature, model_metadata

    columns = [{"type": "double", "name": "f0"}, {"type": "long", "name": "n"}]
    tensor = [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2]}}]
    signature = {"inputs": json.dumps(columns), "outputs": json.dumps(tensor)}
    (tmp_path / "MLmodel").write_text(yaml.safe_dump({"flavors": {}, "signature": signature}))
    inputs, outputs = mlflow_signature(tmp_path)
    assert inputs == [
        {"name": "f0", "datatype": "FP64", "shape": [-1]},
        {"name": "n", "datatype": "INT64", "shape": [-1]},
    ]
    assert outputs == [{"name": "output-0", "datatype": "FP32", "shape": [-1, 2]}]
    assert b'"FP64"' in model_metadata("m", None)  # no signature: the generic description


def _binary_request(header: dict[str, object], *tensors: bytes) -> tuple[bytes, dict[str, str]]:
    """A request as tritonclient's HTTP client builds it: JSON, then the raw tensors."""
    head = json.dumps(header).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }
    return head + b"".join(tensors), headers


def test_binary_tensor_data_both_ways(supervisor: Supervisor, tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    write_script(tmp_path, MULTI)
    (tmp_path / "pair.pkl").write_bytes(b"unused")
    server = start_server(supervisor, "oip-binary", code=tmp_path, model=tmp_path / "pair.pkl")
    assert "binary_tensor_data" in server.get("/v2").json()["extensions"]
    a = np.array([1, 2, 3], dtype="<i4").tobytes()
    b = np.array([0.5, 4.0, 9.25], dtype="<f4").tobytes()
    header = {
        "inputs": [
            {"name": "a", "shape": [3], "datatype": "INT32",
             "parameters": {"binary_data_size": len(a)}},
            {"name": "b", "shape": [3], "datatype": "FP32",
             "parameters": {"binary_data_size": len(b)}},
        ],
        "outputs": [{"name": "total", "parameters": {"binary_data": True}}, {"name": "label"}],
    }  # fmt: skip
    body, headers = _binary_request(header, a, b)
    reply = server.post(body, path="/v2/models/pair/infer", headers=headers)
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == "application/octet-stream"
    size = int(reply.headers["inference-header-content-length"])
    answer = json.loads(reply.body[:size])
    total, label = answer["outputs"]
    assert total["datatype"] == "FP64" and "data" not in total
    assert np.frombuffer(reply.body[size:], dtype="<f8").tolist() == [1.5, 6.0, 12.25]
    assert total["parameters"]["binary_data_size"] == len(reply.body) - size == 24
    assert label["data"] == ["small", "big", "big"]  # not asked in binary: JSON
    # tritonclient's default (no outputs named): every output in binary; BYTES length-prefixed.
    del header["outputs"]
    header["parameters"] = {"binary_data_output": True}
    body, headers = _binary_request(header, a, b)
    reply = server.post(body, path="/v2/models/pair/infer", headers=headers)
    size = int(reply.headers["inference-header-content-length"])
    outputs = json.loads(reply.body[:size])["outputs"]
    assert [o["name"] for o in outputs] == ["total", "label", "n"]
    tail = reply.body[size:]
    sizes = [o["parameters"]["binary_data_size"] for o in outputs]
    assert tail[sizes[0] : sizes[0] + 9] == b"\x05\x00\x00\x00small"
    assert np.frombuffer(tail[sum(sizes[:2]) :], dtype="<i8").tolist() == [3]
    # Mistakes are 400s that say what is wrong.
    for bad_body, bad_headers, message in [
        (*_binary_request(header, a), "binary_data_size 12 overruns the binary data"),
        (*_binary_request(header, a, b, b"xx"), "2 bytes of binary data belong to no input"),
        (body, {**headers, "Inference-Header-Content-Length": "x"}, "is not a number"),
        (body, {**headers, "Inference-Header-Content-Length": "99999"}, "does not fit a body"),
    ]:
        reply = server.post(bad_body, path="/v2/models/pair/infer", headers=bad_headers)
        assert reply.status == 400 and message in reply.json()["error"], reply.body


def test_the_endpoint_name_works_as_the_model_name(supervisor: Supervisor, tmp_path: Path) -> None:
    """Behind a traffic split either deployment may answer: `/v2/models/<endpoint>/...` works
    on each (the deployment's own name too), any other name is a 404."""
    write_script(tmp_path, SCRIPT)
    server = start_server(supervisor, "oip-split", code=tmp_path, scope=("my-endpoint", "blue"))
    request = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}
    for name in ("my-endpoint", "blue"):
        reply = server.post(request, path=f"/v2/models/{name}/infer")
        assert reply.status == 200 and reply.json()["outputs"][0]["data"] == [3], reply.body
        assert server.get(f"/v2/models/{name}/ready").status == 200
    assert server.post(request, path="/v2/models/green/infer").status == 404
