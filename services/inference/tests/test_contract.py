"""Azure's scoring contract, errors and request limits, against one real server process.

The script below does what each request's "op" asks, so one server (two
concurrent runs, one queued, 500 ms timeout, 2 kB payload limit) covers the
contract. Runs go to worker threads here (more than one concurrent run);
test_lifecycle.py covers the inline path.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sluice.common.headers import MODEL_STATUS_HEADER, NOT_PROCESSED_HEADER
from sluice.common.supervisor import Supervisor
from sluice.testing.inference import Server, start_server, wait_until, write_script

pytestmark = pytest.mark.integration  # starts inference server processes

SCRIPT = """
import json, os, threading, time
import numpy as np
from azureml.contrib.services.aml_response import AMLResponse

release = threading.Event()
init_calls = 0

def init():
    global init_calls, weights, model_dir
    init_calls += 1
    model_dir = os.environ["AZUREML_MODEL_DIR"]
    with open(os.path.join(model_dir, "model", "weights.txt")) as f:
        weights = f.read().strip()

def run(raw_data, request_headers):
    request = json.loads(raw_data)
    op = request.get("op")
    if op == "info":
        return {"type": type(raw_data).__name__, "model_dir": model_dir, "weights": weights,
                "init_calls": init_calls, "pid": os.getpid()}
    if op == "echo":
        return request
    if op == "fail":
        raise ValueError("the model cannot score this")
    if op == "sleep":
        time.sleep(request["seconds"])
        return "slept"
    if op == "numpy":
        return np.arange(3) * 1.5
    if op == "bytes":
        return b"\\x00raw"
    if op == "text":
        return "plain"
    if op == "status":
        return {"created": True}, 201
    if op == "aml":
        return AMLResponse("teapot", 418, {"x-model": "m1"})
    if op == "busy":  # the model's own 503, trying to pass for the server's "not processed"
        return AMLResponse("model busy", 503, {"x-sluice-not-processed": "true"})
    if op == "no-content":
        return AMLResponse(None, 204)
    if op == "informational":
        return AMLResponse("early", 101)
    if op == "not-a-status":  # a tuple whose second item is not a final status is data
        return "label", 150
    if op == "aml-500":
        return AMLResponse("the model says no", 500)
    if op == "bigint":
        return {"n": 2 ** 70}
    if op == "header-names":
        return sorted(request_headers)
    if op == "env":
        return {k: os.environ.get(k) for k in ("AML_APP_ROOT", "AZUREML_ENTRY_SCRIPT")}
    if op == "object":
        return object()
    if op == "broken-response":
        class Broken:
            status_code = 200
            def get_data(self):
                raise RuntimeError("no body")
        return Broken()
    if op == "headers":
        return request_headers.get("X-Custom")
    return {"unknown": op}
"""


@pytest.fixture(scope="module")
def model_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parent = tmp_path_factory.mktemp("models")
    (parent / "model").mkdir()
    (parent / "model" / "weights.txt").write_text("w-42\n")
    return parent


@pytest.fixture(scope="module")
def server(
    module_supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory, model_parent: Path
) -> Server:
    code = write_script(tmp_path_factory.mktemp("code"), SCRIPT)
    return start_server(
        module_supervisor,
        "contract",
        code=code,
        model=model_parent / "model",
        extra=[
            "--max-concurrent-requests", "2",
            "--max-queue", "1",
            "--request-timeout-ms", "500",
            "--max-payload-bytes", "2000",
        ],
        scope=("shop", "contract"),
    )  # fmt: skip


def test_model_dir_is_the_folder_that_contains_the_model_and_init_runs_once(
    server: Server, model_parent: Path
) -> None:
    info = server.post({"op": "info"}).json()
    assert info["model_dir"] == str(model_parent.resolve())
    assert info["weights"] == "w-42"
    assert info["init_calls"] == 1
    assert info["type"] == "str"


def test_run_receives_the_body_as_text_and_its_value_comes_back_as_json(server: Server) -> None:
    reply = server.post({"op": "echo", "values": [1, 2.5, "x"]})
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {"op": "echo", "values": [1, 2.5, "x"]}
    assert float(reply.headers["x-ms-run-fn-exec-ms"]) >= 0


def test_run_with_request_headers_receives_them(server: Server) -> None:
    assert server.post({"op": "headers"}, headers={"X-Custom": "c1"}).json() == "c1"


def test_request_id_is_echoed_or_generated(server: Server) -> None:
    given = server.post({"op": "echo"}, headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    first, second = server.post({"op": "echo"}), server.post({"op": "echo"})
    assert first.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    # Up to 100 characters, as on Azure; a longer one is refused before run() sees it.
    assert server.post({"op": "echo"}, headers={"x-request-id": "r" * 100}).status == 200
    refused = server.post({"op": "echo"}, headers={"x-request-id": "r" * 101})
    assert refused.status == 431
    assert refused.json() == {"message": "x-request-id is longer than 100 characters"}
    assert refused.headers["x-request-id"] != "r" * 101
    # The caller's own id is echoed, within the same limit (Azure's server's).
    mine = server.post({"op": "echo"}, headers={"x-ms-client-request-id": "client-7"})
    assert mine.headers["x-ms-client-request-id"] == "client-7" and mine.status == 200
    assert "x-ms-client-request-id" not in first.headers
    refused = server.post({"op": "echo"}, headers={"x-ms-client-request-id": "c" * 101})
    assert refused.status == 431
    assert refused.json() == {"message": "x-ms-client-request-id is longer than 100 characters"}


def test_values_that_are_not_plain_json(server: Server) -> None:
    assert server.post({"op": "numpy"}).json() == [0.0, 1.5, 3.0]
    raw = server.post({"op": "bytes"})
    assert (raw.body, raw.headers["content-type"]) == (b"\x00raw", "application/octet-stream")
    assert server.post({"op": "text"}).json() == "plain"  # a JSON string, as on Azure
    status = server.post({"op": "status"})
    assert (status.status, status.json()) == (201, {"created": True})
    aml = server.post({"op": "aml"})
    assert (aml.status, aml.body, aml.headers["x-model"]) == (418, b"teapot", "m1")


def test_a_status_run_chose_is_marked_and_the_servers_own_refusals_are_not(
    server: Server,
) -> None:
    # The gateway answers a marked status with 424 (a model error) and passes the server's
    # own 408/413/429/503 as they are; a model cannot claim the server's "not processed".
    busy = server.post({"op": "busy"})
    assert (busy.status, busy.body) == (503, b"model busy")
    assert busy.headers[MODEL_STATUS_HEADER] == "true"
    assert NOT_PROCESSED_HEADER not in busy.headers
    assert server.post({"op": "aml"}).headers[MODEL_STATUS_HEADER] == "true"
    assert MODEL_STATUS_HEADER not in server.post({"op": "echo"}).headers
    assert MODEL_STATUS_HEADER not in server.post({"op": "status"}).headers  # a 201
    too_large = server.post({"op": "echo", "pad": "x" * 3000})
    assert too_large.status == 413 and MODEL_STATUS_HEADER not in too_large.headers


def test_answers_without_content_keep_the_connection_s_framing(server: Server) -> None:
    # A 204 with a body would leave it in the stream, read as the start of the next answer.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        answers = []
        for op in ("no-content", "echo", "no-content", "echo"):
            conn.request("POST", "/score", json.dumps({"op": op}))
            reply = conn.getresponse()
            answers.append((reply.status, reply.read()))
        assert answers == [(204, b""), (200, b'{"op":"echo"}')] * 2
        conn.request("HEAD", "/")  # GET's answer without its body
        head = conn.getresponse()
        assert (head.status, head.read(), head.headers["content-length"]) == (200, b"", "7")
        conn.request("POST", "/score", json.dumps({"op": "echo"}))
        assert conn.getresponse().read() == b'{"op":"echo"}'
    finally:
        conn.close()


def test_statuses_run_may_not_answer_with(server: Server) -> None:
    informational = server.post({"op": "informational"})
    assert informational.status == 500 and "status 101" in informational.json()["message"]
    assert server.post({"op": "not-a-status"}).json() == ["label", 150]  # data, as on Azure
    failed = server.post({"op": "aml-500"})
    assert (failed.status, failed.headers["x-ms-run-function-failed"]) == (500, "True")
    assert server.post({"op": "bigint"}).body == b'{"n": 1180591620717411303424}'


def test_run_sees_the_caller_s_headers_as_azure_names_them_and_never_the_gateway_s(
    server: Server,
) -> None:
    names = server.post(
        {"op": "header-names"}, headers={"X-Custom": "c", "x-sluice-gateway": "a-secret"}
    ).json()
    assert "X-Custom" in names and "Content-Type" in names
    assert not [n for n in names if n.lower() == "x-sluice-gateway"]


def test_azure_s_script_variables_are_set_for_a_server_started_by_hand(
    server: Server,
) -> None:
    env = server.post({"op": "env"}).json()
    assert env["AZUREML_ENTRY_SCRIPT"] == "score.py" and env["AML_APP_ROOT"]


def test_unserializable_value_is_a_500_that_names_the_type(server: Server) -> None:
    reply = server.post({"op": "object"})
    assert reply.status == 500
    assert "object" in reply.json()["message"]


def test_response_object_that_breaks_is_a_500_not_a_hang(server: Server) -> None:
    reply = server.post({"op": "broken-response"})
    assert reply.status == 500
    assert "no body" in reply.json()["message"]


def test_failing_run_is_a_500_with_the_message_and_the_server_keeps_serving(
    server: Server,
) -> None:
    reply = server.post({"op": "fail"}, headers={"x-request-id": "req-fail-1"})
    assert reply.status == 500
    assert reply.json()["message"] == "run() failed: ValueError: the model cannot score this"
    assert reply.headers["x-ms-run-function-failed"] == "True"
    assert server.post({"op": "echo"}).status == 200
    failures = [json.loads(line) for line in server.log().splitlines() if '"run_failed"' in line]
    assert any(f["request_id"] == "req-fail-1" and "Traceback" in f["exception"] for f in failures)


def test_payload_over_the_limit_is_413(server: Server) -> None:
    reply = server.post({"op": "echo", "pad": "x" * 3000})
    assert reply.status == 413
    assert "2000" in reply.json()["message"]
    assert server.post({"op": "echo"}).status == 200


def test_slow_run_is_408_and_the_server_is_not_wedged(server: Server) -> None:
    reply = server.post({"op": "sleep", "seconds": 3})
    assert reply.status == 408
    assert "500 ms" in reply.json()["message"]
    # Both slots answer again although the timed-out call still sleeps on its thread.
    with ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(lambda _: server.post({"op": "echo"}).status, range(2)))
    assert statuses == [200, 200]
    assert server.get("/").status == 200


def test_requests_beyond_slots_and_queue_are_429(server: Server) -> None:
    with ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(server.post, {"op": "sleep", "seconds": 0.3}) for _ in range(3)]
        wait_until(
            lambda: (
                'sluice_inference_requests_in_flight{deployment="contract",endpoint="shop"} 3.0'
                in server.metrics()
            ),
            "two runs and one queued request",
        )
        rejected = server.post({"op": "echo"})
        assert rejected.status == 429
        assert "too many pending requests" in rejected.json()["message"]
        assert sorted(f.result().status for f in slow)[:2] == [200, 200]


def test_health_readiness_and_unknown_routes(server: Server) -> None:
    live = server.get("/")
    assert (live.status, live.body) == (200, b"Healthy")
    assert server.get("/ready").json() == {"ready": True}
    assert server.get("/v2/health/ready").status == 200
    assert server.get("/v2/health/live").json() == {"live": True}
    swagger = server.get("/swagger.json").json()  # run() declares no schema: Azure's default
    assert swagger["definitions"]["ServiceInput"] == {"type": "object", "example": {}}
    assert server.get("/nope").status == 404
    assert server.post("{}", path="/ready").status == 405


def test_get_score_passes_the_query_as_json(server: Server) -> None:
    reply = server.get("/score?op=echo&n=3&tag=a&tag=b")
    assert reply.json() == {"op": "echo", "n": 3, "tag": ["a", "b"]}


def test_invalid_utf8_body_is_400(server: Server) -> None:
    assert server.post(b"\xff\xfe").status == 400


def test_metrics_count_requests_errors_and_latency(server: Server) -> None:
    server.post({"op": "echo"})
    server.post({"op": "fail"})
    text = server.metrics()
    scope = 'deployment="contract",endpoint="shop"'  # Azure's dimensions, on every family
    ok = re.search(
        r"sluice_inference_requests_total\{" + scope + r',route="/score",status="200"\} (\d+)',
        text,
    )
    assert ok and int(float(ok.group(1))) >= 1
    assert re.search(
        r"sluice_inference_errors_total\{" + scope + r',kind="run_failed"\} [1-9]', text
    )
    assert (
        "sluice_inference_request_duration_seconds_bucket{" + scope + ',le="0.005",route="/score"}'
        in text
    )
    assert "sluice_inference_run_duration_seconds_count{" + scope + "}" in text


def raw_exchange(server: Server, data: bytes, expect_responses: int) -> bytes:
    """Send raw bytes on one connection; read until `expect_responses` answers arrived."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while received.count(b"HTTP/1.1 ") < expect_responses or not received.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def post_bytes(body: str, extra: str = "") -> bytes:
    return (
        f"POST /score HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n{body}"
    ).encode()


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    first = post_bytes('{"op": "sleep", "seconds": 0.05}')
    second = post_bytes('{"op": "echo", "n": 2}')
    received = raw_exchange(server, first + second, expect_responses=2)
    assert received.index(b'"slept"') < received.index(b'{"op":"echo","n":2}')


def test_malformed_request_is_400_and_closes(server: Server) -> None:
    received = raw_exchange(server, b"NOT HTTP AT ALL\r\n\r\n", expect_responses=1)
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in received


def test_a_head_over_the_limit_is_431_and_closes(server: Server) -> None:
    padded = b"POST /score HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * (64 * 1024) + b"\r\n\r\n"
    received = raw_exchange(server, padded, expect_responses=1)
    assert received.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in received
    assert server.post({"op": "echo"}).status == 200


def test_expect_100_continue_is_honoured(server: Server) -> None:
    body = '{"op": "echo"}'
    head = f"POST /score HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"{head}Expect: 100-continue\r\n\r\n".encode())
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body.encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")


def test_chunked_request_body(server: Server) -> None:
    body = b'{"op": "echo", "chunked": true}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    data = b"POST /score HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    assert b'{"op":"echo","chunked":true}' in raw_exchange(server, data, expect_responses=1)
