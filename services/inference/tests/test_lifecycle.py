"""Start-up and shutdown of real server processes: readiness, failing init, workers."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sluice.common.supervisor import Supervisor, free_port, is_alive, stop_process
from sluice.testing.inference import server_argv, start_server, wait_until, write_script

pytestmark = pytest.mark.integration  # starts inference server processes

SLOW_INIT = """
import os, time
from pathlib import Path

def init():
    release = Path(__file__).with_name("release")
    deadline = time.monotonic() + 30
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)

def run(raw_data):
    return "scored"
"""


def test_readiness_turns_true_only_after_init_returns(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    code = write_script(tmp_path / "code", SLOW_INIT)
    server = start_server(supervisor, "slow-init", code=code, ready=False)
    assert server.get("/").status == 200  # alive while init() runs
    assert server.get("/ready").status == 503
    assert server.get("/v2/health/ready").json() == {"ready": False}
    for rid in ("first", "second"):  # the same refusal twice: each carries only its own id
        early = server.post("{}", headers={"x-request-id": rid})
        assert early.status == 503
        assert "init()" in early.json()["message"]
        assert early.headers["x-sluice-not-processed"] == "true"  # the gateway may retry it
        assert [v for k, v in early.raw_headers if k.lower() == "x-request-id"] == [rid]
    (code / "release").touch()
    server.wait_ready()
    assert server.post("{}").json() == "scored"


def run_to_exit(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    code = write_script(tmp_path / "code", script)
    return subprocess.run(
        server_argv(port=free_port(), code=code),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_failing_init_exits_non_zero_with_the_traceback(tmp_path: Path) -> None:
    script = """
    def init():
        raise ValueError("cannot load the model file")

    def run(raw_data):
        return None
    """
    result = run_to_exit(tmp_path, script)
    assert result.returncode == 3
    assert "init_failed" in result.stderr
    assert "Traceback" in result.stderr
    assert "ValueError: cannot load the model file" in result.stderr


def test_script_without_run_exits_non_zero_and_says_so(tmp_path: Path) -> None:
    result = run_to_exit(tmp_path, "def init():\n    pass\n")
    assert result.returncode == 3
    assert "has no run() function" in result.stderr


def test_script_that_fails_to_import_exits_non_zero(tmp_path: Path) -> None:
    result = run_to_exit(tmp_path, "import no_such_module_here\n")
    assert result.returncode == 3
    assert "No module named 'no_such_module_here'" in result.stderr


def test_bad_arguments_exit_with_usage(tmp_path: Path) -> None:
    result = subprocess.run(
        server_argv(port=free_port()), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "--scoring-script" in result.stderr


PID_SCRIPT = """
import os

def init():
    pass

def run(raw_data):
    return os.getpid()
"""


def test_workers_share_the_port_and_the_metrics(supervisor: Supervisor, tmp_path: Path) -> None:
    code = write_script(tmp_path / "code", PID_SCRIPT)
    server = start_server(supervisor, "workers", code=code, extra=["--workers", "2"])
    pids: set[int] = set()

    def both_answered() -> bool:
        reply = server.post("{}")  # a new connection each time
        if reply.status == 200:
            pids.add(reply.json())
        return len(pids) == 2

    wait_until(both_answered, "answers from two worker processes")
    assert server.process.pid not in pids
    wait_until(
        lambda: (
            'sluice_inference_requests_total{deployment="",endpoint="",route="/score",status="200"}'
            in server.metrics()
        ),
        "the parent to serve the workers' metrics",
    )


def test_sigterm_stops_the_server(supervisor: Supervisor, tmp_path: Path) -> None:
    code = write_script(tmp_path / "code", PID_SCRIPT)
    server = start_server(supervisor, "stop", code=code)
    stop_process(server.process)
    assert not is_alive(server.process)
    assert '"stopped"' in server.log()


SLOW_RUN = """
import time
from pathlib import Path

def init():
    pass

def run(raw_data):
    Path(__file__).with_name("running").touch()
    time.sleep(1.0)
    return "finished"
"""


def test_sigterm_finishes_requests_in_flight_and_refuses_new_ones_retriably(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    code = write_script(tmp_path / "code", SLOW_RUN)
    server = start_server(supervisor, "drain", code=code)
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    idle.request("GET", "/")  # a kept-alive connection, as the gateway's pool holds them
    assert idle.getresponse().read() == b"Healthy"
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(server.post, "{}")
        wait_until((code / "running").exists, "run() to start")
        os.kill(server.process.pid, signal.SIGTERM)
        wait_until(lambda: not _accepts(server.port), "the listener to close")
        # A request on a connection opened before SIGTERM: refused before processing, marked
        # for the gateway to retry elsewhere, and the connection closed.
        idle.request("POST", "/score", body=b"{}", headers={"Content-Type": "application/json"})
        refused = idle.getresponse()
        assert refused.status == 503
        assert refused.getheader("x-sluice-not-processed") == "true"
        assert refused.getheader("connection") == "close"
        assert json.loads(refused.read()) == {"message": "shutting down"}
        assert in_flight.result().json() == "finished"
    wait_until(lambda: not is_alive(server.process), "the server to exit")
    assert '"unfinished": 0' in server.log()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


ASYNC_RUN = """
import asyncio

def init():
    pass

async def run(raw_data):
    await asyncio.sleep(0)
    return {"async": raw_data}
"""


def test_async_run_is_awaited(supervisor: Supervisor, tmp_path: Path) -> None:
    code = write_script(tmp_path / "code", ASYNC_RUN)
    server = start_server(supervisor, "async", code=code)
    assert server.post("x").json() == {"async": "x"}


@pytest.mark.parametrize("timeout_ms", ["0", "-5"])
def test_non_positive_timeout_is_refused(tmp_path: Path, timeout_ms: str) -> None:
    code = write_script(tmp_path / "code", PID_SCRIPT)
    argv = server_argv(port=free_port(), code=code, extra=["--request-timeout-ms", timeout_ms])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "at least 1" in result.stderr


SLEEPER = """
import time

def init():
    pass

def run(raw_data):
    time.sleep(float(raw_data))
    return "done"
"""


def test_liveness_fails_while_timed_out_runs_hold_every_spare_thread(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    code = write_script(tmp_path / "code", SLEEPER)
    extra = ["--max-concurrent-requests", "4", "--max-queue", "0", "--request-timeout-ms", "200"]
    server = start_server(supervisor, "stuck", code=code, extra=extra)
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: server.post("1.5").status, range(4)))
    assert statuses == [408] * 4
    assert server.get("/").status == 503  # four runs still sleep on their threads
    wait_until(lambda: server.get("/").status == 200, "the stuck runs to return")
    assert server.post("0").json() == "done"
