"""No-code Triton deployments (azureml-examples' deploy-triton-managed-online-endpoint.sh):
a Triton model repository of one ONNX model answers as Triton does, by the model's folder
name and its graph's tensor names.

tritonclient is not installed here, so its HTTP client's requests are rebuilt byte for
byte (tritonclient/http/_utils.py `_get_inference_request`: compact JSON, `inputs` as
`{"name", "shape", "datatype", "parameters": {"binary_data_size": N}}`, `outputs` as
`{"name", "parameters": {"binary_data": true}}` or else `parameters.binary_data_output`,
the raw tensors after the JSON, `Inference-Header-Content-Length` and no content type),
and its answers read as its `InferResult.as_numpy` reads them.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sluice.common.supervisor import Supervisor, free_port
from sluice.inference.oip_grpc_http import PATH, SERVICE
from sluice.testing.inference import Response, Server, request, server_argv, start_server
from sluice.v1 import grpc_predict_v2_pb2 as pb

pytestmark = pytest.mark.integration  # starts inference server processes

np = pytest.importorskip("numpy")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

NUMPY = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4"}
WEIGHTS = np.arange(48, dtype=np.float32).reshape(12, 4) / 10
CONFIG = """
# As Triton's own densenet_onnx sample writes it.
name: "model_1"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    dims: [ -1, 3, 2, 2 ]
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ -1, 4 ]
  }
]
"""


def _save(graph: Any, path: Path) -> None:
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime >= 1.14 reads
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def densenet_like(path: Path) -> None:
    """A tiny stand-in for the sample's densenet: `data_0` [-1, 3, 2, 2] FP32 in, `fc6_1`
    (scores, FP32) and `label` (their argmax, INT64) out."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["data_0"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["fc6_1"]),
            helper.make_node("ArgMax", ["fc6_1"], ["label"], axis=1, keepdims=0),
        ],
        "densenet_like",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, ["batch", 3, 2, 2])],
        [
            helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [numpy_helper.from_array(WEIGHTS, "W")],
    )
    _save(graph, path)


def two_inputs(path: Path) -> None:
    """`a` FP32 [-1, 2] and `b` INT64 [-1, 2] in; `diff` = a - b (FP32), `twice` = b + b."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["b_float"], to=TensorProto.FLOAT),
            helper.make_node("Sub", ["a", "b_float"], ["diff"]),
            helper.make_node("Add", ["b", "b"], ["twice"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 2]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["n", 2]),
        ],
        [
            helper.make_tensor_value_info("diff", TensorProto.FLOAT, ["n", 2]),
            helper.make_tensor_value_info("twice", TensorProto.INT64, ["n", 2]),
        ],
    )
    _save(graph, path)


@pytest.fixture(scope="module")
def triton(module_supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """The sample's layout: `path: ./models`, the repository, holding `model_1/1/model.onnx`
    (with a config.pbtxt here), deployed as `blue` of `my-endpoint`."""
    models = tmp_path_factory.mktemp("triton") / "models"
    densenet_like(models / "model_1" / "1" / "model.onnx")
    (models / "model_1" / "config.pbtxt").write_text(CONFIG)
    return start_server(module_supervisor, "triton", model=models, scope=("my-endpoint", "blue"))


def image(batch: int = 1) -> Any:
    return (np.arange(batch * 12, dtype=np.float32).reshape(batch, 3, 2, 2) - 5) / 4


def tritonclient_infer(
    server: Server,
    model: str,
    inputs: list[tuple[str, Any, str]],
    outputs: list[str] | None = None,
    request_id: str = "",
) -> Response:
    """InferenceServerClient.infer(model, [InferInput(name, shape, datatype) with
    set_data_from_numpy(array)], outputs=[InferRequestedOutput(name)], request_id=...)."""
    body: dict[str, Any] = {}
    if request_id:
        body["id"] = request_id
    body["inputs"] = [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": datatype,
            "parameters": {"binary_data_size": array.nbytes},
        }
        for name, array, datatype in inputs
    ]
    if outputs:
        body["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    else:
        body["parameters"] = {"binary_data_output": True}
    head = json.dumps(body, separators=(",", ":"))
    raw = head.encode() + b"".join(array.tobytes() for _, array, _ in inputs)
    headers = {"Inference-Header-Content-Length": str(len(head))}
    return request(server.port, "POST", f"/v2/models/{model}/infer", raw, headers)


def as_numpy(reply: Response, name: str) -> Any:
    """InferResult(response).as_numpy(name)."""
    size = int(reply.headers["inference-header-content-length"])
    result, buffer = json.loads(reply.body[:size]), reply.body[size:]
    at = 0
    for output in result["outputs"]:
        length = output.get("parameters", {}).get("binary_data_size")
        if output["name"] == name:
            dtype = NUMPY[output["datatype"]]
            if length is None:
                return np.array(output["data"], dtype=dtype).reshape(output["shape"])
            return np.frombuffer(buffer[at : at + length], dtype=dtype).reshape(output["shape"])
        at += length or 0
    return None


def test_ready_and_metadata_by_the_triton_model_name(triton: Server) -> None:
    # is_server_live(), is_server_ready(), is_model_ready("model_1", "1") as the sample calls it
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/model_1/versions/1/ready"):
        assert triton.get(path).status == 200, path
    assert triton.get("/v2/models/model_1/ready").status == 200
    missing = triton.get("/v2/models/model_1/versions/2/ready")
    assert missing.status == 404 and "it serves 1" in missing.json()["error"]
    metadata = triton.get("/v2/models/model_1").json()
    assert metadata == {
        "name": "model_1",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "data_0", "datatype": "FP32", "shape": [-1, 3, 2, 2]}],
        "outputs": [
            {"name": "fc6_1", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
    }
    assert triton.get("/v2/models/model_1/versions/1").json() == metadata
    assert "model_1" in triton.get("/v2/models/nope/ready").json()["error"]


def test_infer_as_the_sample_client_does(triton: Server) -> None:
    """infer("model_1", [InferInput("data_0", ...)], outputs=[InferRequestedOutput("fc6_1")])
    then as_numpy("fc6_1"): only the output asked for, in binary."""
    data = image()
    reply = tritonclient_infer(triton, "model_1", [("data_0", data, "FP32")], ["fc6_1"], "r-1")
    assert reply.status == 200, reply.body
    size = int(reply.headers["inference-header-content-length"])
    answer = json.loads(reply.body[:size])
    assert answer["model_name"] == "model_1" and answer["model_version"] == "1"
    assert answer["id"] == "r-1"
    assert [o["name"] for o in answer["outputs"]] == ["fc6_1"]
    expected = data.reshape(1, 12) @ WEIGHTS
    assert as_numpy(reply, "fc6_1") == pytest.approx(expected, rel=1e-5)
    assert as_numpy(reply, "fc6_1").shape == (1, 4)
    # No outputs named: every output, all in binary (tritonclient's binary_data_output).
    batch = image(3)
    reply = tritonclient_infer(triton, "model_1", [("data_0", batch, "FP32")])
    assert reply.status == 200, reply.body
    scores = batch.reshape(3, 12) @ WEIGHTS
    assert as_numpy(reply, "fc6_1") == pytest.approx(scores, rel=1e-5)
    assert as_numpy(reply, "label").tolist() == scores.argmax(axis=1).tolist()


def test_infer_with_json_tensors(triton: Server) -> None:
    data = image(2)
    body = {
        "inputs": [
            {"name": "data_0", "shape": [2, 3, 2, 2], "datatype": "FP32",
             "data": data.tolist()},
        ],
        "outputs": [{"name": "label"}],
    }  # fmt: skip
    reply = triton.post(body, path="/v2/models/model_1/infer")
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == "application/json"
    scores = data.reshape(2, 12) @ WEIGHTS
    assert reply.json()["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [2],
         "data": scores.argmax(axis=1).tolist()},
    ]  # fmt: skip
    # No outputs named and no binary asked for: every output as JSON.
    del body["outputs"]
    outputs = triton.post(body, path="/v2/models/model_1/infer").json()["outputs"]
    assert [o["name"] for o in outputs] == ["fc6_1", "label"]
    assert outputs[0]["data"] == pytest.approx(scores.ravel().tolist(), rel=1e-5)


def test_requests_that_do_not_fit_the_graph_are_400s(triton: Server) -> None:
    def refused(body: dict[str, Any]) -> str:
        reply = triton.post(body, path="/v2/models/model_1/infer")
        assert reply.status == 400, reply.body
        return str(reply.json()["error"])

    good = {"name": "data_0", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [0.0] * 12}
    error = refused({"inputs": [{**good, "name": "input"}]})
    assert "unexpected inference input 'input'" in error and "['data_0']" in error
    assert "expects FP32" in refused({"inputs": [{**good, "datatype": "FP64"}]})
    error = refused({"inputs": [{**good, "shape": [1, 12], "data": [0.0] * 12}]})
    assert "does not fit model 'model_1''s [-1, 3, 2, 2]" in error
    assert "needs 12 values, got 3" in refused({"inputs": [{**good, "data": [1.0, 2.0, 3.0]}]})
    assert "does not fit datatype FP32" in refused({"inputs": [{**good, "data": ["a"] * 12}]})
    error = refused({"inputs": [good], "outputs": [{"name": "predict"}]})
    assert "unexpected inference output 'predict'" in error and "'fc6_1'" in error
    error = refused({"inputs": [good], "outputs": [{"name": ["fc6_1"]}]})  # not a string
    assert "unexpected inference output ['fc6_1']" in error
    assert "needs the inputs ['data_0']" in refused({"inputs": []})
    # Binary data that does not match its header says so.
    short = tritonclient_infer(triton, "model_1", [("data_0", image()[:, :2], "FP32")])
    assert short.status == 400 and "does not fit" in short.json()["error"]
    wrong_type = tritonclient_infer(triton, "model_1", [("data_0", image(), "FP64")])
    assert wrong_type.status == 400 and "expects FP32" in wrong_type.json()["error"]


def test_the_deployment_name_and_score_answer_as_before(triton: Server) -> None:
    """The deployment's and endpoint's names keep the generic OIP answers (any input name,
    output `predict`), and /score its `{"data": rows}` (first input, first output)."""
    data = image()
    expected = pytest.approx((data.reshape(1, 12) @ WEIGHTS).ravel().tolist(), rel=1e-5)
    body = {"inputs": [{"name": "x", "shape": [1, 3, 2, 2], "datatype": "FP32",
                        "data": data.ravel().tolist()}]}  # fmt: skip
    for name in ("blue", "my-endpoint"):
        reply = triton.post(body, path=f"/v2/models/{name}/infer")
        assert reply.status == 200, reply.body
        (output,) = reply.json()["outputs"]
        assert output["name"] == "predict" and output["data"] == expected
        assert output["shape"] == [1, 4]
        assert triton.get(f"/v2/models/{name}/ready").status == 200
    assert np.ravel(triton.post({"data": data.tolist()}).json()).tolist() == expected


def test_grpc_model_infer_by_the_triton_name(triton: Server) -> None:
    """tritonclient[grpc] through the gateway's reverse bridge: raw contents in and out."""
    data = image(2)

    def bridged(call: pb.ModelInferRequest) -> tuple[dict[str, str], pb.ModelInferResponse]:
        message = call.SerializeToString()
        body = struct.pack(">BI", 0, len(message)) + message
        reply = triton.post(body, path=PATH, headers={"Content-Type": "application/grpc"})
        assert reply.status == 200, reply.body
        answer = pb.ModelInferResponse()
        if "grpc-status" not in reply.headers:
            answer.ParseFromString(reply.body[5:])
        return reply.headers, answer

    call = pb.ModelInferRequest(model_name="model_1", model_version="1", id="g-1")
    call.inputs.add(name="data_0", datatype="FP32", shape=[2, 3, 2, 2])
    call.raw_input_contents.append(data.tobytes())
    call.outputs.add(name="fc6_1")
    headers, answer = bridged(call)
    assert (answer.model_name, answer.model_version, answer.id) == ("model_1", "1", "g-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [
        ("fc6_1", "FP32", [2, 4])
    ]
    scores = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(2, 4)
    assert scores == pytest.approx(data.reshape(2, 12) @ WEIGHTS, rel=1e-5)

    # ModelReady and ModelMetadata are answered by their REST twins, by the same name.
    def method(name: str, message: Any) -> bytes:
        raw = message.SerializeToString()
        headers = {"Content-Type": "application/grpc"}
        body = struct.pack(">BI", 0, len(raw)) + raw
        reply = triton.post(body, path=f"{SERVICE}{name}", headers=headers)
        assert reply.status == 200 and "grpc-status" not in reply.headers, reply.headers
        return reply.body[5:]

    ready = method("ModelReady", pb.ModelReadyRequest(name="model_1", version="1"))
    assert pb.ModelReadyResponse.FromString(ready).ready
    metadata = pb.ModelMetadataResponse.FromString(
        method("ModelMetadata", pb.ModelMetadataRequest(name="model_1"))
    )
    assert [(t.name, list(t.shape)) for t in metadata.inputs] == [("data_0", [-1, 3, 2, 2])]
    typed = pb.ModelInferRequest(model_name="model_1")
    typed.inputs.add(name="data", datatype="FP32", shape=[1, 3, 2, 2])
    typed.inputs[0].contents.fp32_contents.extend([0.0] * 12)
    headers, _ = bridged(typed)
    assert headers["grpc-status"] == "3"  # INVALID_ARGUMENT
    assert "unexpected inference input 'data'" in headers["grpc-message"]


@pytest.fixture(scope="module")
def two(module_supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """`path` at the model's own folder, no config.pbtxt, two versions: 3 is served. The
    deployment has the model's name, which then answers as Triton does."""
    folder = tmp_path_factory.mktemp("triton-two") / "pair"
    two_inputs(folder / "3" / "model.onnx")
    (folder / "1").mkdir()
    (folder / "1" / "model.onnx").write_bytes(b"not the version Triton loads")
    return start_server(module_supervisor, "triton-two", model=folder, scope=("ep", "pair"))


def test_each_input_feeds_the_graph_input_of_its_name(two: Server) -> None:
    assert two.get("/v2/models/pair/versions/3/ready").status == 200
    assert two.get("/v2/models/pair").json()["versions"] == ["3"]
    assert two.get("/v2/models/ep").json()["platform"] == "sluice-inference"  # the generic one
    a = np.array([[1.5, 2.0], [3.0, -1.0]], dtype=np.float32)
    b = np.array([[1, 2], [3, 4]], dtype=np.int64)
    # Inputs in the other order than the graph's, one as JSON and one binary.
    inputs = [
        {"name": "b", "shape": [2, 2], "datatype": "INT64",
         "parameters": {"binary_data_size": b.nbytes}},
        {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": a.tolist()},
    ]  # fmt: skip
    outputs = [{"name": "twice"}, {"name": "diff", "parameters": {"binary_data": True}}]
    text = json.dumps({"inputs": inputs, "outputs": outputs}, separators=(",", ":"))
    headers = {"Inference-Header-Content-Length": str(len(text))}
    reply = request(two.port, "POST", "/v2/models/pair/infer", text.encode() + b.tobytes(), headers)
    assert reply.status == 200, reply.body
    size = int(reply.headers["inference-header-content-length"])
    twice, diff = json.loads(reply.body[:size])["outputs"]
    assert twice == {"name": "twice", "datatype": "INT64", "shape": [2, 2], "data": [2, 4, 6, 8]}
    assert diff["parameters"]["binary_data_size"] == 16 and "data" not in diff
    assert as_numpy(reply, "diff").tolist() == (a - b).tolist()
    missing = two.post({"inputs": inputs[1:]}, path="/v2/models/pair/infer")
    assert missing.status == 400 and "needs the inputs ['b'] too" in missing.json()["error"]


@pytest.mark.parametrize(
    ("files", "says"),
    [
        (
            {"m/config.pbtxt": 'platform: "tensorrt_plan"\n', "m/1/model.plan": ""},
            "Triton model 'm' is a 'tensorrt_plan' model",
        ),
        ({"m/1/model.pt": ""}, "version 1 is a PyTorch TorchScript model (model.pt)"),
        (
            {"m/config.pbtxt": 'backend: "python"\n', "m/1/model.py": ""},
            "Triton model 'm' is a 'python' model",
        ),
        (
            {"a/1/model.onnx": "", "b/1/model.onnx": ""},
            "holds 2 models (a, b)",
        ),
    ],
)
def test_what_sluice_does_not_serve_is_refused_at_start(
    tmp_path: Path, files: dict[str, str], says: str
) -> None:
    repository = tmp_path / "models"
    for name, text in files.items():
        (repository / name).parent.mkdir(parents=True, exist_ok=True)
        (repository / name).write_text(text)
    result = subprocess.run(
        server_argv(port=free_port(), model=repository),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3
    assert says in result.stderr, result.stderr
    assert "Sluice serves a Triton repository of one ONNX model" in result.stderr
