"""Adaptive batching: concurrent requests merged into one run() call, answers split back."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sluice.common.supervisor import Supervisor
from sluice.common.trace_files import read_spans
from sluice.inference.batching import batch_rows
from sluice.inference.config import parse_args
from sluice.testing.inference import start_server, wait_until, write_script
from sluice.testing.wait import wait_for

BATCHED = """
import json, time

BATCHABLE = True

def init():
    pass

def run(raw):
    rows = json.loads(raw)["data"]
    time.sleep(0.02)  # a vectorised model: one call costs about the same for 1 or 16 rows
    return [[row[0] * 2, len(rows)] for row in rows]
"""


def test_rows_of_a_batchable_body() -> None:
    assert batch_rows(b'{"data": [[1], [2]]}') == [[1], [2]]
    for other in (b'{"data": []}', b'{"data": [1], "x": 2}', b"[1]", b"{bad", b'{"data": 3}'):
        assert batch_rows(other) is None


def test_settings_come_from_the_deployment_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("MAX_BATCH_WAIT_MS", "3")
    config = parse_args(["--model", "m.pkl"])
    assert (config.max_batch_size, config.max_batch_wait_ms) == (16, 3)
    assert parse_args(["--model", "m.pkl", "--max-batch-size", "4"]).max_batch_size == 4
    monkeypatch.setenv("MAX_BATCH_SIZE", "lots")
    with pytest.raises(SystemExit):
        parse_args(["--model", "m.pkl"])


@pytest.mark.integration
def test_concurrent_requests_share_run_calls(supervisor: Supervisor, tmp_path: Path) -> None:
    write_script(tmp_path, BATCHED)
    traces = tmp_path / "traces"
    server = start_server(
        supervisor, "batched", code=tmp_path,
        extra=["--max-batch-size", "8", "--max-batch-wait-ms", "50",
               "--max-concurrent-requests", "32",
               "--trace-dir", str(traces), "--trace-sampling-ratio", "1.0"],
    )  # fmt: skip
    assert "batching_on" in server.log()

    def score(i: int) -> tuple[int, list[list[int]]]:
        rows = [[i], [i + 1000]] if i % 2 else [[i]]
        reply = server.post({"data": rows})
        return reply.status, reply.json()

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(score, range(48)))
    sizes = []
    for i, (status, answer) in enumerate(results):
        assert status == 200, answer
        expected = [i * 2, (i + 1000) * 2] if i % 2 else [i * 2]
        assert [value for value, _ in answer] == expected  # each request gets its own rows
        sizes += [size for _, size in answer]
    assert max(sizes) > 1 and max(sizes) <= 8  # merged, never past max_batch_size
    # Traced: each run() over a batch is one span, child of one request's span and linked
    # to every request it served; together the run spans served the 48 requests.
    spans: list[dict[str, Any]] = []

    def every_request_served() -> bool:
        spans[:] = list(read_spans(traces))
        runs = [s for s in spans if s["name"] == "run"]
        return sum(r["attributes"].get("sluice.batch.requests", 0) for r in runs) == 48

    wait_for(every_request_served, "run spans covering the 48 requests", deadline=15)
    requests = {s["span_id"]: s for s in spans if s["name"] == "POST /score"}
    runs = [s for s in spans if s["name"] == "run"]
    assert max(len(r["links"]) for r in runs) > 1
    for run in runs:
        assert run["parent_id"] in requests
        assert len(run["links"]) == run["attributes"]["sluice.batch.requests"]
        assert requests[run["parent_id"]]["trace_id"] in run["links"]
    assert "sluice_inference_batch_rows_count" in server.metrics()
    # OIP inferences with one input are batched the same way.
    oip = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT64", "data": [[7]]}]}
    reply = server.post(oip, path="/v2/models/model/infer")
    assert reply.status == 200 and reply.json()["outputs"][0]["data"] == [14, 1], reply.body
    # Bodies of another shape are scored one by one, as without batching.
    assert server.post({"data": [[1]], "extra": 1}).json() == [[2, 1]]


WRONG_LENGTH = """
import json
BATCHABLE = True
def init():
    pass
def run(raw):
    return [0]
"""


@pytest.mark.integration
def test_a_batched_run_must_answer_one_value_per_row(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    write_script(tmp_path, WRONG_LENGTH)
    server = start_server(supervisor, "wrong", code=tmp_path, extra=["--max-batch-size", "4"])
    reply = server.post({"data": [[1], [2]]})
    assert reply.status == 500
    assert (
        "must answer one value per row: it got 2 rows and answered 1"
        in json.loads(reply.body)["message"]
    )


@pytest.mark.integration
def test_scripts_that_do_not_declare_batches_are_not_batched(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    write_script(tmp_path, BATCHED.replace("BATCHABLE = True", ""))
    server = start_server(supervisor, "plain", code=tmp_path, extra=["--max-batch-size", "4"])
    assert "batching_off" in server.log()
    assert server.post({"data": [[1], [2]]}).json() == [[2, 2], [4, 2]]


HOLDING = """
import json, os, time

BATCHABLE = True
SEEN = []  # the first value of every row run() was given
RELEASE = os.path.join(os.path.dirname(__file__), "release")


def init():
    pass


def run(raw):
    rows = json.loads(raw)["data"]
    SEEN.extend(row[0] for row in rows)
    if rows[0][0] == 1:  # holds run() until the test releases it
        deadline = time.monotonic() + 30
        while not os.path.exists(RELEASE) and time.monotonic() < deadline:
            time.sleep(0.01)
    return [[row[0], 666 in SEEN] for row in rows]
"""


def _score_request(value: int) -> bytes:
    body = json.dumps({"data": [[value]]}).encode()
    return (
        b"POST /score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )


@pytest.mark.integration
@pytest.mark.parametrize("batched", [True, False], ids=["batcher", "dispatcher"])
def test_a_request_whose_client_went_away_leaves_the_queue(
    supervisor: Supervisor, tmp_path: Path, batched: bool
) -> None:
    """Clients that time out and disconnect while their request waits (wrk at load 15) must
    not keep its place: the queue would stay full and live requests get 429s."""
    write_script(tmp_path, HOLDING)
    extra = ["--max-concurrent-requests", "1", "--max-queue", "2"]
    if batched:
        extra += ["--max-batch-size", "2", "--max-batch-wait-ms", "60000"]  # no timed batch
    server = start_server(supervisor, f"abandon-{batched}", code=tmp_path, extra=extra)
    assert ("batching_on" in server.log()) == batched

    def seen() -> int:  # requests the server has read (its liveness answer says)
        return int(server.get("/").headers["x-sluice-requests"])

    with ThreadPoolExecutor(4) as pool:
        holder = pool.submit(server.post, {"data": [[1]]})  # runs, and holds the only slot
        wait_until(lambda: seen() == 1, "the holding request read")
        gone = []
        for n in range(2, 5):  # queued behind it: the queue is then full
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(_score_request(666))
            gone.append(sock)
            wait_until(lambda n=n: seen() == n, "the queued request read")
        assert server.post({"data": [[2]]}).status == 429
        for sock in gone:  # their clients give up
            sock.close()
        # The batcher's places are for waiting requests, besides the running batch; the
        # dispatcher's include the running call, so there the third request got a 429.
        abandoned = 3 if batched else 2
        wait_until(
            lambda: f'kind="abandoned"}} {abandoned}.0' in server.metrics(), "abandoned counted"
        )
        live = [pool.submit(server.post, {"data": [[v]]}) for v in (3, 4)]
        wait_until(lambda: seen() == 7, "the live requests read")
        (tmp_path / "release").touch()
        assert holder.result().json() == [[1, False]]
        for value, reply in zip((3, 4), live, strict=True):
            # Queued in the places the abandoned ones left, and run() never saw those.
            assert reply.result().status == 200
            assert reply.result().json() == [[value, False]]
