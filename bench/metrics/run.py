"""The metrics service's three targets, each against a baseline from the same run.

1. Ingest: access-log records/s. (a) In-process on one core: decoding Envoy's Forward
   messages (msgpack) alone (baseline) vs decoding + counting into buckets. (b) End to
   end: the real `python -m sluice.metrics` pinned to one core, one mutual-TLS
   connection (as one Envoy worker's) writing messages of 500 records as fast as the
   socket takes them; the clock stops when MongoDB holds every record (nothing dropped:
   stored == sent).
2. Access logging's cost to the data plane: two Envoys (each with its own traffic
   controller) in front of the same inference server, one with the access log to the
   metrics service and one without; wrk rounds alternate between them, and the CPU
   time of each round's data plane (its Envoy, the model server, the metrics service)
   is counted per request.
3. A 24 h query at 1-minute steps for one deployment (1,440 stored minutes with
   realistic sketches) through the gRPC API, p50/p95 over 40 calls; baseline: the
   same documents fetched with a plain `find`.

Everything on loopback: nats-server, SecantusDB, our services, Envoy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import msgpack
import psutil

from sluice.common import access_log as f
from sluice.common.components import python_service_spec
from sluice.common.health import HttpCheck
from sluice.common.log import configure_logging
from sluice.common.mongo import create_mongo_client
from sluice.common.pki import ALS_SERVER, PlatformPki
from sluice.common.settings import EnvoySettings, Settings, service_env
from sluice.common.supervisor import ProcessSpec, Supervisor, free_port, stop_process
from sluice.metrics import query
from sluice.metrics.buckets import Buckets
from sluice.metrics.forward import IngestStats, add_records
from sluice.metrics.sketch import key_of
from sluice.metrics.store import MetricsStore
from sluice.testing.stack import servers
from sluice.v1 import metrics_pb2, metrics_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared import bench_module  # bench/shared.py
from stats import cores, spread  # bench/stats.py

BATCH = 500
# BENCH_PIN=1 (the default on 2+ cores): the access-log cost's processes on their cores.
PINNED = os.environ.get("BENCH_PIN", "1") == "1" and len(cores()) >= 2
DEPLOYMENTS = ("blue", "green", "shadow")


def entries_message(n: int, rng: random.Random, now: float) -> bytes:
    """One Forward-mode message of `n` records as the gateway's Envoy sends them."""
    entries = []
    for _ in range(n):
        dep = rng.choice(DEPLOYMENTS)
        code = 200 if rng.random() < 0.97 else rng.choice((404, 429, 503))
        record = f.render(
            f.Entry(
                endpoint="bench",
                deployment=dep,
                start_ms=int(now * 1000),
                duration_us=int(rng.lognormvariate(1.0, 0.6) * 1000),
                status=code,
                flags="UH" if code == 503 else "",
                request_header_bytes=180,
                request_body_bytes=40,
                response_header_bytes=150,
                response_body_bytes=24,
                method="POST",
                upstream="127.0.0.1:5001",
                path="/score",
                request_id=str(uuid.UUID(int=rng.getrandbits(128))),
            )
        )
        entries.append([int(now), record])
    return msgpack.packb([f.TAG, entries])


def in_process(messages: list[bytes]) -> list[str]:
    os.sched_setaffinity(0, {0})
    n = sum(len(msgpack.unpackb(m)[1]) for m in messages)
    rates: dict[str, list[float]] = {"decode": [], "ingest": []}
    for _ in range(3):
        started = time.perf_counter()
        for raw in messages:
            for _time, record in msgpack.unpackb(raw)[1]:
                record.get(f.TEXT)  # touch like a reader would
        rates["decode"].append(n / (time.perf_counter() - started))
        buckets, stats = Buckets(), IngestStats()
        started = time.perf_counter()
        for raw in messages:
            add_records(buckets, stats, msgpack.unpackb(raw)[1])
        rates["ingest"].append(n / (time.perf_counter() - started))
        assert sum(b.requests for b in buckets.open.values()) == n
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    decode, ingest = max(rates["decode"]), max(rates["ingest"])
    return [
        f"| in-process, one core: decode only (baseline) | {decode:,.0f} records/s | |",
        f"| in-process, one core: decode + count into buckets | {ingest:,.0f} records/s "
        f"| {ingest / decode:.2f}x of decode |",
    ]


async def stored_requests(address: str, token: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = metrics_pb2_grpc.MetricsStub(channel)
        request = metrics_pb2.GetEndpointMetricsRequest(endpoint_name="bench")
        try:
            reply = await stub.GetEndpointMetrics(
                request, metadata=(("authorization", f"Bearer {token}"),)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return 0  # nothing stored yet
            raise
    return sum(p.requests for p in reply.points if p.deployment_name == query.ENDPOINT_TOTAL)


async def end_to_end(
    address: str, port: int, pki: Path, token: str, messages: list[bytes]
) -> tuple[int, float]:
    """Write every message on one mutual-TLS connection to the access-log `port` (as an
    Envoy worker does); seconds until all are stored."""
    sent = sum(len(msgpack.unpackb(m)[1]) for m in messages)
    before = await stored_requests(address, token)
    started = time.perf_counter()
    identity = PlatformPki(pki).client("bench-envoy")
    context = ssl.create_default_context(cafile=str(identity.ca))
    context.load_cert_chain(str(identity.cert), str(identity.key))
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=ALS_SERVER
    )
    for raw in messages:
        writer.write(raw)
        await writer.drain()
    writer.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if await stored_requests(address, token) - before >= sent:
            break
        await asyncio.sleep(0.05)
    total = time.perf_counter() - started
    stored = await stored_requests(address, token) - before
    assert stored == sent, f"stored {stored} of {sent} records"
    return sent, total


def pin_tree(pid: int, cpus: set[int]) -> None:
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def measure_ingest(
    sup: Supervisor, settings: Settings
) -> tuple[list[str], str, tuple[int, int], Callable[[], float]]:
    """Rows, the API's address, the ports for Envoy (stats, access log), a restart."""
    rng = random.Random(1)
    now = time.time()
    messages = [entries_message(BATCH, rng, now) for _ in range(240)]  # 120,000 entries
    rows = in_process(messages[:80])
    port, als_port, log_port = free_port(), free_port(), free_port()
    ports = {"metrics": port, "als": als_port, "access_log": log_port}
    metrics_settings = settings.model_copy(
        update={"ports": settings.ports.model_copy(update=ports)}
    )

    def spec(**extra: str) -> ProcessSpec:
        return python_service_spec(
            name="metrics",
            module="sluice.metrics",
            host="127.0.0.1",
            port=port,
            env={**os.environ, **service_env(metrics_settings), **extra},
            python=sys.executable,
        )

    proc = sup.start(spec())

    def restart() -> float:
        """Stop and start the service; seconds until its point cache is warm."""
        stop_process(proc)
        before = proc.log_path.read_text().count("point_cache_warmed")
        started = time.monotonic()
        sup.start(spec(SLUICE_LOG_LEVEL="info"))  # it logs point_cache_warmed
        while proc.log_path.read_text().count("point_cache_warmed") == before:
            if time.monotonic() - started > 300:
                raise TimeoutError("the point cache was not warmed")
            time.sleep(0.1)
        return time.monotonic() - started

    address = f"127.0.0.1:{port}"
    token = settings.admin_token or ""
    pki = settings.pki_folder
    pin_tree(proc.pid, {1})
    os.sched_setaffinity(0, {0})
    try:
        # warm up (stream, indexes)
        asyncio.run(end_to_end(address, log_port, pki, token, messages[:20]))
        results = [
            asyncio.run(end_to_end(address, log_port, pki, token, messages)) for _ in range(2)
        ]
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    sent, seconds = min(results, key=lambda r: r[1])
    rows.append(
        f"| end to end: `sluice.metrics` pinned to one core, one access-log connection, until "
        f"stored in MongoDB | **{sent / seconds:,.0f} records/s** | {sent:,} sent = {sent:,} "
        "stored, 0 dropped |"
    )
    return rows, address, (als_port, log_port), restart


async def measure_query(
    settings: Settings, address: str, restart: Callable[[], float]
) -> list[str]:
    """1,440 minutes of one deployment, each with ~1,000 requests' sketch, then queries."""
    assert settings.mongodb_uri
    mongo = create_mongo_client(settings.mongodb_uri, appname="bench")
    db = mongo[settings.mongodb_database]
    store = MetricsStore(db)
    rng = random.Random(2)
    end = int(time.time()) // 60 * 60
    start = end - 86400
    buckets = Buckets()
    for minute in range(start, end, 60):
        bucket = buckets.get("day", "blue", minute)
        for _ in range(1000):
            latency = rng.lognormvariate(2.0, 0.8)
            k = key_of(latency)
            bucket.latency[k] = bucket.latency.get(k, 0) + 1
            bucket.latency_sum_ms += latency
        bucket.requests = 1000
        bucket.status_class = {"2xx": 990, "5xx": 10}
        bucket.status_code = {"200": 990, "503": 10}
        bucket.bytes_in, bucket.bytes_out = 220_000, 174_000
        bucket.cpu_sum, bucket.memory_sum, bucket.usage_samples = 480.0, 240.0, 24
        bucket.instances = {"a", "b"}
    await store.write("bench-day", buckets.take())
    # As the registry would have them: the API checks that the scope exists.
    await db["online_endpoints"].insert_one({"_id": "day"})
    await db["online_deployments"].insert_one({"_id": "day/blue"})
    bins = statistics.mean(
        [len(d.get("latency", {})) async for d in db["metrics_minutes"].find({"endpoint": "day"})]
    )
    window_start = datetime.fromtimestamp(start, UTC)
    window_end = datetime.fromtimestamp(end, UTC)
    api: list[float] = []
    raw: list[float] = []
    token = settings.admin_token or ""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = metrics_pb2_grpc.MetricsStub(channel)
        request = metrics_pb2.GetEndpointMetricsRequest(
            endpoint_name="day", deployment_name="blue", step_s=60
        )
        request.window.start.FromSeconds(start)
        request.window.end.FromSeconds(end)
        meta = (("authorization", f"Bearer {token}"),)
        cold_started = time.perf_counter()
        await stub.GetEndpointMetrics(request, metadata=meta)
        cold = (time.perf_counter() - cold_started) * 1000
        for i in range(45):
            t0 = time.perf_counter()
            reply = await stub.GetEndpointMetrics(request, metadata=meta)
            t1 = time.perf_counter()
            docs = await store.minutes("day", "blue", window_start, window_end)
            t2 = time.perf_counter()
            if i >= 5:  # the first calls warm caches
                api.append((t1 - t0) * 1000)
                raw.append((t2 - t1) * 1000)
        assert len(reply.points) == 1440 and len(docs) == 1440
    warm_up_s = await asyncio.to_thread(restart)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = metrics_pb2_grpc.MetricsStub(channel)
        after = time.perf_counter()
        reply = await stub.GetEndpointMetrics(request, metadata=meta)
        after_restart = (time.perf_counter() - after) * 1000
        assert len(reply.points) == 1440
    await mongo.close()

    def p(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[int(q * 100) - 1]

    return [
        f"| baseline: `find` of the 1,440 minute documents (~{bins:.0f} sketch bins each) "
        f"| p50 {statistics.median(raw):.1f} ms | p95 {p(raw, 0.95):.1f} ms | |",
        f"| `GetEndpointMetrics` 24 h, 1-minute steps, one deployment, first call (cold: "
        f"read and sketched from SecantusDB) | {cold:.0f} ms | | |",
        f"| first call after a restart, once the cache is warm (warm-up in the background "
        f"took {warm_up_s:.1f} s from the start) | {after_restart:.0f} ms | | |",
        f"| same, repeated (closed minutes from the aggregator's point cache) "
        f"| p50 {statistics.median(api):.1f} ms | **p95 {p(api, 0.95):.1f} ms** "
        f"| {statistics.median(api) / statistics.median(raw):.3f}x of the find |",
    ]


def measure_access_log_cost(
    sup: Supervisor, settings: Settings, root: Path, envoy_ports: tuple[int, int]
) -> list[str]:
    """Two gateways (Envoy + its traffic controller) in front of one model server, one
    with the access log to the metrics service and one without, wrk rounds alternating."""
    traffic = bench_module("traffic")
    if not (traffic.MODEL / "model").exists():  # the example's model, as bench/provisioner does
        subprocess.run([sys.executable, str(traffic.ROOT / "examples/train_models.py")], check=True)
    inference_port = free_port()
    inference = sup.start(
        ProcessSpec(
            name="inference",
            argv=traffic.inference_argv(inference_port),
            health=HttpCheck(f"http://127.0.0.1:{inference_port}/ready"),
            env={**os.environ},
            ports=[inference_port],
        )
    )
    gateways: dict[str, int] = {}
    envoys: dict[str, int] = {}
    for name, logged in (("plain", False), ("logged", True)):
        http_port, xds_port = free_port(), free_port()
        gw = settings.model_copy(
            update={
                "envoy": EnvoySettings(http_port=http_port, https_port=free_port()),
                "ports": settings.ports.model_copy(update={"xds": xds_port, "metrics": 0}),
            }
        )
        env = {
            **os.environ,
            **service_env(gw),
            "SLUICE_TRAFFIC_DEBOUNCE_MS": "20",
            "SLUICE_TRAFFIC_ACCESS_LOG": "true" if logged else "false",
        }
        spec = python_service_spec(  # named "traffic" for its health check's TLS name
            name="traffic",
            module="sluice.traffic",
            host="127.0.0.1",
            port=xds_port,
            env=env,
            python=sys.executable,
        )
        sup.start(dataclasses.replace(spec, name=f"traffic-{name}"))
        envoys[name] = traffic.envoy_process(
            sup,
            root,
            f"envoy-{name}",
            xds_port,
            PlatformPki(gw.pki_folder),
            metrics=envoy_ports,  # both: the same stats stream; only one logs requests
        )
        gateways[name] = http_port
    asyncio.run(traffic.setup_endpoint(settings, f"127.0.0.1:{inference_port}"))
    for port in gateways.values():
        traffic.wait_routed(port)
    headers = {
        "Host": f"bench.{traffic.DOMAIN}",
        "Authorization": f"Bearer {traffic.KEY}",
        "Content-Type": "application/json",
    }
    url = "http://127.0.0.1:{}/score"
    metrics_pid = _metrics_pid()
    # BENCH_PIN=1 (the default on 2+ cores), as bench/traffic's pinned row: the model server
    # alone on CPU 1; wrk, the gateways and the metrics service on CPU 0, where the log's
    # cost (Envoy's and the metrics service's CPU) takes requests/s. Unpinned, the scheduler
    # moved the same gateway's requests/s by up to 54% between rounds on a quiet machine.
    load_cpus: set[int] | None = None
    if PINNED:
        load_cpus = {0}
        pin_tree(inference.pid, {1})
        for pid in (*envoys.values(), metrics_pid):
            pin_tree(pid, load_cpus)
    for port in gateways.values():
        traffic.wrk(url.format(port), 8, 2, headers, load_cpus)  # warm up
    runs: dict[str, list[float]] = {name: [] for name in gateways}
    ratios: list[float] = []
    # CPU per request of the data plane (the gateway's Envoy, the model server and the
    # metrics service, which is idle for the plain gateway): unlike requests/s, hardly moved
    # by the other sessions' load. Its ratio is what requests/s would be, CPU-bound.
    cpu_ms: dict[str, list[float]] = {name: [] for name in gateways}
    # ... of which the gateway's Envoy and the metrics service (µs per request)
    envoy_us: dict[str, list[float]] = {name: [] for name in gateways}
    metrics_us: dict[str, list[float]] = {name: [] for name in gateways}
    cpu_ratios: list[float] = []
    rounds = int(os.environ.get("BENCH_METRICS_ROUNDS", "6"))
    for n in range(rounds):  # back to back, order alternating: the machine is shared
        order = ["plain", "logged"] if n % 2 == 0 else ["logged", "plain"]
        got, per_request = {}, {}
        for name in order:
            pids = (envoys[name], inference.pid, metrics_pid)
            before = [_cpu_seconds(pid) for pid in pids]
            got[name] = traffic.wrk(url.format(gateways[name]), 32, 5, headers, load_cpus)["rps"]
            if name == "logged":
                time.sleep(1.2)  # Envoy's last batch of the round (it sends every second)
            used = [_cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
            requests = got[name] * 5
            per_request[name] = sum(used) * 1000 / requests
            envoy_us[name].append(used[0] * 1e6 / requests)
            metrics_us[name].append(used[2] * 1e6 / requests)
        for name, rps in got.items():
            runs[name].append(rps)
            cpu_ms[name].append(per_request[name])
        ratios.append(got["logged"] / got["plain"])
        cpu_ratios.append(per_request["plain"] / per_request["logged"])

    def cpu(name: str) -> str:
        return (
            f"CPU {spread(cpu_ms[name]).show('{:.3f}')} ms/request (Envoy "
            f"{statistics.median(envoy_us[name]):.0f} µs, metrics service "
            f"{statistics.median(metrics_us[name]):.0f} µs)"
        )

    ratio = statistics.median(ratios)
    return [
        f"| Envoy without access log (baseline) | {spread(runs['plain']).show('{:,.0f}')} "
        f"| {cpu('plain')} |",
        f"| Envoy with the access log to `sluice.metrics` "
        f"| {spread(runs['logged']).show('{:,.0f}')} "
        f"| **{spread(ratios).show('{:.3f}')}x** requests/s, ratio to the same round's "
        f"baseline (cost {100 * (1 - ratio):.1f}%); {cpu('logged')}: "
        f"**{spread(cpu_ratios).show('{:.3f}')}x** CPU-bound |",
    ]


def _metrics_pid() -> int:
    """The metrics service started (and restarted) by this run."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "sluice.metrics" in child.cmdline():
                return child.pid
    raise RuntimeError("no sluice.metrics process")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of the process and its children so far."""
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


def main() -> None:
    configure_logging(level="warning")
    load = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-metrics-") as tmp,
        servers(Path(tmp)) as (sup, base),
    ):
        settings = base.model_copy(update={"mongodb_database": "bench"})
        rows = ["| ingest | rate | |", "|---|---:|---|"]
        ingest, address, envoy_ports, restart = measure_ingest(sup, settings)
        rows += ingest
        print("\n".join(rows), flush=True)
        if "--no-query" not in sys.argv:  # (the 24 h query needs minutes on SecantusDB)
            query_rows = ["", "| query | | | |", "|---|---:|---:|---|"]
            query_rows += asyncio.run(measure_query(settings, address, restart))
            print("\n".join(query_rows), flush=True)
        if "--no-gateway" not in sys.argv:  # (run directly: python bench/metrics/run.py)
            how = "model server on CPU 1, the rest on CPU 0" if PINNED else "unpinned"
            cost = [
                "",
                f"| data plane (wrk c=32, 5 s rounds, order alternating, {how}) | req/s | |",
            ]
            cost += ["|---|---:|---|"]
            cost += measure_access_log_cost(sup, settings, Path(tmp), envoy_ports)
            print("\n".join(cost), flush=True)
    print(f"(load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})", flush=True)


if __name__ == "__main__":
    main()
