"""What the inference server costs per request outside run(), in microseconds, in-process.

`uv run --no-sync python bench/inference/overhead.py [--batches 40] [--requests 400]`

wrk's requests per second on this shared machine move with every other process
(bench/README.md); this measures the server's own Python per request without
the network, so one change can be weighed while others run. It builds the
server as `serve()` does (metrics, dispatcher with its limits, the benchmark's
score.py from run.py), warms run() up until it runs inline on the event loop
(as under load), then alternates batches of requests fed to one connection
(`Connection.data_received` with wrk's request bytes: parse, route, dispatch,
run(), JSON, metrics, response bytes handed to the transport) with batches of
run() alone. The minimum batch of each is the least-disturbed one; their
difference is the server's cost outside run(). The kernel's part (recv, send,
epoll: a few us) is not in it: bench/inference/profile.py reports that.
To weigh a change, run it here and with `PYTHONPATH=<other checkout>/services/inference/src`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

import sluice.inference
from sluice.inference.app import InferenceApp, load_scorer
from sluice.inference.config import ServerConfig
from sluice.inference.dispatch import WARMUP_CALLS, Dispatcher, Limits
from sluice.inference.http import Connection
from sluice.inference.metrics import Metrics
from sluice.inference.swagger import swagger_documents

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from shared import bench_module  # noqa: E402 - bench/shared.py, found through the line above

bench = bench_module("inference")

# What wrk sends (bench/inference/run.py's post.lua), byte for byte but the port.
REQUEST = (
    "POST /score HTTP/1.1\r\nHost: 127.0.0.1:5001\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(bench.BODY)}\r\n\r\n{bench.BODY}"
).encode()


class Sink:
    """The transport of the connection: keeps the last answer."""

    def __init__(self) -> None:
        self.last = b""
        self.answered = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.last = data
        self.answered.set()

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        raise RuntimeError(f"the server closed the connection after {self.last!r}")


async def build(work: Path, trace_ratio: float | None = None) -> tuple[Connection, Sink]:
    """The server as serve() composes it, with run() warmed up onto the event loop; with
    `trace_ratio`, tracing requests at that ratio to JSON lines under `work`/traces."""
    config = ServerConfig(model=work / "model", code=work / "code", scoring_script="score.py")
    metrics = Metrics(CollectorRegistry())
    app = InferenceApp(metrics)
    if trace_ratio is not None:
        from sluice.common.log import configure_logging
        from sluice.inference.tracing import start_tracing

        configure_logging(level="info", fmt="json")  # as the server: per-request debug lines off

        traced = dataclasses.replace(
            config, trace_sampling_ratio=trace_ratio, trace_dir=work / "traces"
        )
        app.tracing = start_tracing(traced, ("bench", "blue"))
    scorer = load_scorer(config)
    limits = Limits(max_concurrent=1, max_queue=64, timeout_s=config.request_timeout_ms / 1000)
    if hasattr(metrics, "track_in_flight"):
        dispatcher = Dispatcher(limits, is_async=scorer.is_async)
        dispatcher.on_in_flight = metrics.track_in_flight(lambda: dispatcher.in_flight)
    else:  # a checkout to compare with, from before 2026-11-26
        gauge = metrics.in_flight.set
        dispatcher = Dispatcher(limits, is_async=scorer.is_async, on_in_flight=gauge)
    app.start_scoring(scorer, dispatcher, swagger_documents(config.code, scorer.schema))
    gc.freeze()
    sink = Sink()
    conn = Connection(app.handle, config.max_payload_bytes)
    conn.connection_made(sink)  # type: ignore[arg-type]
    for _ in range(WARMUP_CALLS + 100):  # through worker threads first: let each one finish
        sink.answered.clear()
        conn.data_received(REQUEST)
        await sink.answered.wait()
    return conn, sink


def per_request_us(batch: Any, n: int) -> float:
    started = time.perf_counter()
    batch(n)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=10, help="per batch")
    parser.add_argument("--trace", type=float, default=None, help="tracing ratio (off if unset)")
    asyncio.run(measure(parser.parse_args()))


async def measure(args: argparse.Namespace) -> None:
    """In a running event loop, as in the server (a call that is not inline needs one)."""
    work = bench.prepare_model()
    run = bench.load_run(work)
    conn, sink = await build(work, args.trace)

    async def server(n: int) -> None:
        for _ in range(n):
            sink.answered.clear()
            conn.data_received(REQUEST)
            # Answered at once when run() is inline; a preempted call (this machine is
            # shared) sends the next ones to a worker thread for a while: wait for those.
            if not sink.answered.is_set():
                await sink.answered.wait()

    def alone(n: int) -> None:
        for _ in range(n):
            run(bench.BODY)

    await server(args.requests)
    assert sink.last.startswith(b"HTTP/1.1 200"), sink.last
    served, ran = [], []
    for _ in range(args.batches):
        started = time.perf_counter()
        await server(args.requests)
        served.append((time.perf_counter() - started) / args.requests * 1e6)
        ran.append(per_request_us(alone, args.requests))
    print(f"sluice.inference from {Path(sluice.inference.__file__).parent}")
    print("| us per request | min | median |")
    print("|---|---:|---:|")
    print(f"| server, run() inline | {min(served):.1f} | {statistics.median(served):.1f} |")
    print(f"| run() alone | {min(ran):.1f} | {statistics.median(ran):.1f} |")
    overhead = [s - r for s, r in zip(served, ran, strict=True)]
    print(f"| outside run() | {min(served) - min(ran):.1f} | {statistics.median(overhead):.1f} |")


if __name__ == "__main__":
    main()
