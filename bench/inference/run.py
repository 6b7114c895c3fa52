"""Sluice's inference server against Azure's azureml-inference-server-http, same model, one run.

`uv run --no-sync python bench/run.py inference` (or this file directly):

1. trains a Ridge regression on sklearn's bundled diabetes data and writes
   it with the same score.py that both servers load (AZUREML_MODEL_DIR layout);
2. measures the ceiling: calls/s of that run() alone in a loop, in-process
   (2 s before each round of step 4; the best one is reported);
3. installs azureml-inference-server-http (and the same numpy, scikit-learn
   and joblib versions) into its own virtualenv under the cache folder;
4. starts both servers, one worker each, warms each up (2 s of load), then
   drives them with wrk (1 thread, 16 connections) in alternating 5 s rounds,
   three each, and reports each server's median round: on this shared 2-core
   machine a burst from another process then cannot spoil one server's
   whole measurement;
5. measures Sluice's latency at 70% of its median peak with an open-loop
   load generator (below; three 5 s rounds, the median round reported):
   requests leave on a fixed schedule and latency counts from the scheduled
   time, so a stall shows up in p99 instead of slowing the sender (wrk2 is
   not packaged here; wrk's Lua delay() only knows whole milliseconds per
   connection, too coarse to hold a rate). The generator measures its own lag
   (how late each request left); a round where it fell behind measured the
   generator, not the server, and is run again (up to 3 times, then reported
   as such).

On a machine with 2 cores or more the servers run on the last core and the
load generators (wrk, the open loop, the ceiling loop) on the first, so that
neither steals the other's CPU. Every figure is the median of the rounds with
their spread (bench/stats.py), ratios taken round by round.

Sluice runs with --max-queue 64: its default queue (as many as the concurrent
runs) would answer wrk's 16 connections with 429 while it warms up, which is
right behind a gateway but not what a throughput test measures.
Cache: $SLUICE_BENCH_CACHE or ~/.cache/sluice-bench.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from stats import cores, pin, spread  # bench/stats.py

CACHE = Path(os.environ.get("SLUICE_BENCH_CACHE", Path.home() / ".cache" / "sluice-bench"))
WORK = CACHE / "inference"
AZURE_VENV = CACHE / "azureml-server"
UV = shutil.which("uv") or "uv"
WRK = shutil.which("wrk")
CONNECTIONS = 16
SECONDS = 5  # per round
ROUNDS = 3  # each figure is the median round: one round can catch another process's burst
BODY = '{"data": [[0.038, 0.050, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017]]}'

SCORE_PY = """
import json
import os

import joblib


def init():
    global model
    model = joblib.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.pkl"))


def run(raw_data):
    data = json.loads(raw_data)["data"]
    return model.predict(data).tolist()
"""


class Result(NamedTuple):  # not a dataclass: bench/run.py loads this file outside sys.modules
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float = 0.0
    lag_p99_ms: float = 0.0  # the open-loop generator's own lateness (0 for closed loops)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare_model() -> Path:
    """Train the model and write score.py; return the folder that holds `model/` and `code/`."""
    import joblib
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    features, target = load_diabetes(return_X_y=True)
    (WORK / "model").mkdir(parents=True, exist_ok=True)
    (WORK / "code").mkdir(exist_ok=True)
    joblib.dump(Ridge(alpha=0.1).fit(features, target), WORK / "model" / "model.pkl")
    (WORK / "code" / "score.py").write_text(textwrap.dedent(SCORE_PY))
    return WORK


def load_run(work: Path) -> Any:
    """The script's run(), after its init(), loaded in this process."""
    os.environ["AZUREML_MODEL_DIR"] = str(work)
    spec = importlib.util.spec_from_file_location("bench_score", work / "code" / "score.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.init()
    for _ in range(2000):
        module.run(BODY)
    return module.run


def ceiling(run: Any, seconds: float) -> float:
    """Calls per second of run() alone in a loop."""
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(500):
            run(BODY)
        calls += 500
    return calls / (time.perf_counter() - started)


def ensure_azure_server() -> Path:
    """azmlinfsrv in its own virtualenv, with this environment's model libraries."""
    from importlib import metadata

    binary = AZURE_VENV / "bin" / "azmlinfsrv"
    pins = [f"{name}=={metadata.version(name)}" for name in ("numpy", "scikit-learn", "joblib")]
    marker = AZURE_VENV / "pins.txt"
    if binary.exists() and marker.exists() and marker.read_text() == "\n".join(pins):
        return binary
    subprocess.run([UV, "venv", "-q", "--clear", "-p", "3.11", str(AZURE_VENV)], check=True)
    env = {**os.environ, "VIRTUAL_ENV": str(AZURE_VENV)}
    subprocess.run(
        [UV, "pip", "install", "-q", "azureml-inference-server-http", *pins], check=True, env=env
    )
    marker.write_text("\n".join(pins))
    return binary


def wait_for(
    url: str, deadline_s: float = 120.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:  # noqa: S310 - loopback
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {deadline_s:g}s")


SERVER_CPU: int | None = None  # set by main(): the core the servers run on


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    cpu = SERVER_CPU
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}),
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def peak(port: int, seconds: int) -> Result:
    """Closed-loop load (each connection sends again once answered): wrk, else Python."""
    if WRK is not None:
        return wrk(f"http://127.0.0.1:{port}/score", seconds)
    return uvloop.run(closed_loop(port, seconds))


def wrk(url: str, seconds: int, headers: dict[str, str] | None = None) -> Result:
    """wrk's closed loop on `url` (POST BODY), with `headers` besides the content type."""
    script = WORK / "post.lua"
    script.write_text(
        f"wrk.method = 'POST'\nwrk.body = '{BODY}'\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
        + "".join(f"wrk.headers['{k}'] = '{v}'\n" for k, v in (headers or {}).items())
    )
    assert WRK is not None
    out = subprocess.run(
        [WRK, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"errors under load:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return Result(rps, _wrk_percentile(out, "50%"), _wrk_percentile(out, "99%"))


def _wrk_percentile(out: str, which: str) -> float:
    match = re.search(rf"{re.escape(which)}\s+([\d.]+)(us|ms|s)", out)
    assert match, out
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]
    return float(match.group(1)) * scale


class _Client(asyncio.Protocol):
    """One keep-alive connection of the open-loop generator: one request at a time."""

    def __init__(self, done: Any) -> None:
        import httptools

        self.done = done
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.due = 0.0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.done(self, self.parser.get_status_code())


def _request_bytes() -> bytes:
    return (
        "POST /score HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n{BODY}"
    ).encode()


async def closed_loop(port: int, seconds: float, connections: int = CONNECTIONS) -> Result:
    """wrk's measurement in Python, for machines without wrk (it costs the server more CPU)."""
    loop = asyncio.get_running_loop()
    request = _request_bytes()
    latencies: list[float] = []
    errors = 0
    running = connections
    finished = asyncio.Event()
    stop_at = time.perf_counter() + seconds

    def done(client: _Client, status: int) -> None:
        nonlocal errors, running
        now = time.perf_counter()
        latencies.append(now - client.due)
        errors += status != 200
        if now < stop_at:
            client.due = now
            assert client.transport is not None
            client.transport.write(request)
            return
        running -= 1
        if running == 0:
            finished.set()

    started = time.perf_counter()
    for _ in range(connections):
        _, client = await loop.create_connection(lambda: _Client(done), "127.0.0.1", port)
        client.due = time.perf_counter()
        assert client.transport is not None
        client.transport.write(request)
    await asyncio.wait_for(finished.wait(), seconds + 30)
    if errors:
        raise RuntimeError(f"closed loop: {errors} errors")
    latencies.sort()
    return Result(
        len(latencies) / (time.perf_counter() - started),
        latencies[len(latencies) // 2] * 1e3,
        latencies[int(len(latencies) * 0.99)] * 1e3,
    )


async def open_loop(port: int, rate: float, seconds: float, connections: int = 64) -> Result:
    """Send `rate` requests/s on a fixed schedule; latency counts from each scheduled time.

    Times come from perf_counter: uvloop's loop.time() has millisecond steps.
    """
    loop = asyncio.get_running_loop()
    request = _request_bytes()
    idle: deque[_Client] = deque()
    backlog: deque[float] = deque()
    latencies: list[float] = []
    lags: list[float] = []  # how late each request left (the generator's own delay)
    errors = 0
    all_answered = asyncio.Event()
    total = int(rate * seconds)

    def send(client: _Client, due: float) -> None:
        client.due = due
        assert client.transport is not None
        client.transport.write(request)

    def done(client: _Client, status: int) -> None:
        nonlocal errors
        latencies.append(time.perf_counter() - client.due)
        errors += status != 200
        if len(latencies) == total:
            all_answered.set()
        if backlog:
            send(client, backlog.popleft())
        else:
            idle.append(client)

    for _ in range(connections):
        _, client = await loop.create_connection(lambda: _Client(done), "127.0.0.1", port)
        idle.append(client)
    started = time.perf_counter()
    for i in range(total):
        due = started + i / rate
        wait = due - time.perf_counter()
        if wait > 0.002:  # uvloop's timers have millisecond steps: sleep most of the wait...
            await asyncio.sleep(wait - 0.0015)
        while time.perf_counter() < due:  # noqa: ASYNC110 - a timer cannot wait this precisely
            await asyncio.sleep(0)  # yield (answers still read); the generator has its own core
        lags.append(time.perf_counter() - due)  # (a backlogged request's wait is the server's)
        if idle:
            send(idle.popleft(), due)
        else:  # every connection busy: the server is behind (its lag, not the generator's)
            backlog.append(due)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_answered.wait(), 10)
    elapsed = time.perf_counter() - started
    if errors or len(latencies) < total:
        raise RuntimeError(f"open loop: {errors} errors, {total - len(latencies)} unanswered")
    latencies.sort()
    lags.sort()
    return Result(
        total / elapsed,
        latencies[len(latencies) // 2] * 1e3,
        latencies[int(len(latencies) * 0.99)] * 1e3,
        latencies[int(len(latencies) * 0.999)] * 1e3,
        lags[int(len(lags) * 0.99)] * 1e3,
    )


GENERATOR_LAG_MS = 1.0  # a round whose generator sent its p99 request later than this is redone


def open_round(port: int, rate: float) -> Result:
    """One open-loop round, redone (up to 3 times) while the generator itself fell behind."""
    for attempt in range(3):
        result = uvloop.run(open_loop(port, rate=rate, seconds=SECONDS))
        if result.lag_p99_ms <= GENERATOR_LAG_MS:
            return result
        late = f"open loop: the generator sent its p99 request {result.lag_p99_ms:.2f} ms late"
        print(f"{late}, round {'redone' if attempt < 2 else 'kept: GENERATOR-LIMITED'}")
    return result


def ensure_wrk() -> str | None:
    """wrk from Debian's packages, installed if missing; None when apt cannot provide it."""
    if shutil.which("wrk") is None and shutil.which("apt-get") is not None:
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            subprocess.run(command, capture_output=True, check=False)
    return shutil.which("wrk")


def main() -> None:
    available = cores()
    if len(available) >= 2:  # servers on the last core, generators (this process) on the first
        globals()["SERVER_CPU"] = available[-1]
        pin(available[0])
        print(f"servers on CPU {available[-1]}, load generators on CPU {available[0]}")
    globals()["WRK"] = ensure_wrk()
    if WRK is None:
        print("wrk is not available: using the Python closed-loop generator", flush=True)
    work = prepare_model()
    run = load_run(work)
    azure_bin = ensure_azure_server()
    env = {**os.environ, "AZUREML_MODEL_DIR": str(work)}
    azure_port, sluice_port = free_port(), free_port()
    azure_argv = [str(azure_bin), "--entry_script", str(work / "code" / "score.py")]
    sluice_argv = [
        sys.executable, "-m", "sluice.inference",
        "--model", str(work / "model"), "--code", str(work / "code"),
        "--scoring-script", "score.py", "--port", str(sluice_port),
        "--max-queue", "64", "--log-format", "json",
    ]  # fmt: skip
    azure_process = start(
        [*azure_argv, "--port", str(azure_port)],
        {**env, "WORKER_COUNT": "1"},
        WORK / "azure.log",
    )
    sluice_process = start(sluice_argv, env, WORK / "sluice.log")
    try:
        wait_for(f"http://127.0.0.1:{azure_port}/", process=azure_process)
        wait_for(f"http://127.0.0.1:{sluice_port}/ready", process=sluice_process)
        peak(azure_port, 2)  # warm-up
        peak(sluice_port, 2)  # warm-up: Sluice leaves its measuring phase here
        # Alternate the two servers so that a burst from another process on this shared
        # machine cannot land on one server's whole measurement; report the median round.
        azure_rounds: list[Result] = []
        sluice_rounds: list[Result] = []
        ceilings: list[float] = []
        for _ in range(ROUNDS):
            ceilings.append(ceiling(run, 2.0))
            azure_rounds.append(peak(azure_port, SECONDS))
            sluice_rounds.append(peak(sluice_port, SECONDS))
        print("ceiling rounds, calls/s:", [round(c) for c in ceilings], flush=True)
        print("RPS rounds: azure", [round(r.rps) for r in azure_rounds], flush=True)
        print("RPS rounds: sluice", [round(r.rps) for r in sluice_rounds], flush=True)
        azure, sluice = median(azure_rounds, "rps"), median(sluice_rounds, "rps")
        open_rounds = [open_round(sluice_port, 0.7 * sluice.rps) for _ in range(ROUNDS)]
        print("open loop rounds, p99 ms:", [round(r.p99_ms, 2) for r in open_rounds], flush=True)
        print("generator lag p99 ms:", [round(r.lag_p99_ms, 3) for r in open_rounds], flush=True)
        at70 = median(open_rounds, "p99_ms")
    finally:
        stop(azure_process)
        stop(sluice_process)
    report(max(ceilings), azure, sluice, at70)
    # Ratios round by round (each round's pair ran back to back), as median and spread.
    print()
    print(
        "Sluice / Azure RPS:",
        spread([s.rps / a.rps for s, a in zip(sluice_rounds, azure_rounds, strict=True)]).show(
            "{:.2f}x"
        ),
    )
    print(
        "Sluice / ceiling:",
        spread([s.rps / c for s, c in zip(sluice_rounds, ceilings, strict=True)]).show("{:.0%}"),
    )
    print("open loop p99 ms:", spread([r.p99_ms for r in open_rounds]).show())
    print("open loop p99.9 ms:", spread([r.p999_ms for r in open_rounds]).show())


def median(results: list[Result], key: str) -> Result:
    return sorted(results, key=lambda r: float(getattr(r, key)))[len(results) // 2]


def report(calls: float, azure: Result, sluice: Result, at70: Result) -> None:
    ratio = sluice.rps / azure.rps
    share = sluice.rps / calls
    print()
    print(f"| server (1 worker, {ROUNDS} x {SECONDS} s, median round) | RPS | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for name, result in (("azureml-inference-server-http", azure), ("sluice.inference", sluice)):
        print(f"| {name} | {result.rps:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} |")
    print(
        f"| sluice.inference, open loop at 70% of its peak "
        f"| {at70.rps:,.0f} "
        f"| {at70.p50_ms:.2f} | {at70.p99_ms:.2f} |"
    )
    print(f"| run() alone in a loop (ceiling, best of {ROUNDS}) | {calls:,.0f} | | |")
    print()
    print(f"Sluice / Azure RPS: {ratio:.1f}x (target >= 5x) {'MET' if ratio >= 5 else 'MISSED'}")
    print(f"Sluice / ceiling: {share:.0%} (target >= 60%) {'MET' if share >= 0.6 else 'MISSED'}")
    print(
        f"p99 at 70% of peak: {at70.p99_ms:.2f} ms (target <= 5 ms) "
        f"{'MET' if at70.p99_ms <= 5 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
