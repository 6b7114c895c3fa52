"""The gateway's cost and the control plane's speed.

1. Throughput and latency through Envoy vs directly to the same inference
   server (the example sklearn model, one row per request): wrk, c=32 for
   throughput (ratio routed/direct), c=1 closed loop for the added p50/p99;
   then the throughput again with the model server pinned to CPU 1 and wrk
   and Envoy to CPU 0 (both paths alike), i.e. without CPU contention.
2. Traffic change -> served (Envoy ACK) latency: the endpoint document changes
   and its event is published, as the registry does; timed until the
   controller's `traffic.applied` names the new endpoint version.
3. 1,000 endpoints x 2 deployments: snapshot build, consistency check, and push
   until a real Envoy ACKed every type; then one endpoint's change on top.

Everything runs on loopback: nats-server, SecantusDB, Envoy (`--concurrency 1`),
the inference server, the traffic controller process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml
from envoy.service.discovery.v3 import ads_pb2_grpc
from faststream.nats import NatsBroker

from sluice.common import gateway_auth
from sluice.common.components import (
    ENVOY_BOOTSTRAP,
    envoy_spec,
    find_project_file,
    python_service_spec,
    render_envoy_bootstrap,
)
from sluice.common.events import ensure_events_stream, parse_envelope
from sluice.common.grpc_server import GrpcServer
from sluice.common.health import HttpCheck
from sluice.common.log import configure_logging
from sluice.common.mongo import create_mongo_client
from sluice.common.pki import PlatformPki
from sluice.common.settings import EnvoySettings, Settings
from sluice.common.supervisor import ProcessSpec, Supervisor, free_port, stop_process
from sluice.testing.plugin import service_env
from sluice.testing.stack import servers
from sluice.testing.traffic import World
from sluice.traffic.domain import (
    Deployment,
    Endpoint,
    Gateway,
    KeyAuth,
    Listen,
    Share,
    Upstream,
)
from sluice.traffic.jwks import PLACEHOLDER_JWKS
from sluice.traffic.tls import ensure_local_certificate, load_material
from sluice.traffic.xds.builder import SnapshotBuilder
from sluice.traffic.xds.server import SERVICE_NAME, AdsServer, Outcome
from sluice.traffic.xds.snapshot import short

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stats import spread  # bench/stats.py

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))  # each figure: median and spread of these
MODEL = ROOT / "examples/online/model-1"
BODY = json.dumps({"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]})
KEY = "bench-primary-key"
DOMAIN = "sluice.localhost"


def envoy_process(
    sup: Supervisor,
    root: Path,
    name: str,
    xds_port: int,
    pki: PlatformPki | None,
    *,
    all_stats: bool = False,
    metrics: tuple[int, int] | None = None,
) -> int:
    """An Envoy of node id `bench-<name>`; `pki` None: plain xDS (the in-process server).
    `all_stats`: without the bootstrap's `stats_config` (Envoy's default: every stat).
    `metrics`: the metrics service's ports for Envoy on loopback (stats, access log)."""
    admin = free_port()
    config = render_envoy_bootstrap(
        find_project_file(ENVOY_BOOTSTRAP),
        admin_port=admin,
        xds_host="127.0.0.1",
        xds_port=xds_port,
        node_id=f"bench-{name}",
        tls=pki.client(f"bench-{name}") if pki else None,
        metrics=("127.0.0.1", metrics[0]) if metrics else None,
        access_log=("127.0.0.1", metrics[1]) if metrics else None,
    )
    if all_stats:
        del config["stats_config"]
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = sup.start(
        envoy_spec(host="127.0.0.1", admin_port=admin, bootstrap=path, listener_ports=[], name=name)
    )
    return proc.pid


def pin(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of `pid` (existing ones: sched_setaffinity is
    per thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def wrk(
    url: str,
    connections: int,
    seconds: int,
    headers: dict[str, str],
    cpus: set[int] | None = None,
) -> dict[str, float]:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(BODY)}"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [
            shutil.which("wrk") or "/usr/bin/wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    ).stdout
    script.unlink()
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")

    def ms(label: str) -> float:
        m = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    return {"rps": float(rps.group(1)), "p50": ms("50"), "p99": ms("99")}


def measure_pinned(
    direct: str,
    routed: str,
    host: str,
    inference_pid: int,
    envoy_pid: int,
    direct_headers: dict[str, str],
) -> list[str]:
    """The same throughput with the model server on a core of its own (wrk and Envoy share
    the other), as a gateway runs in production: the hop's cost without CPU contention."""
    if (os.cpu_count() or 1) < 2:
        return []
    routed_headers = {"Host": host, "Authorization": f"Bearer {KEY}"}
    routed_headers["Content-Type"] = "application/json"
    pin(inference_pid, {1})
    pin(envoy_pid, {0})
    try:
        runs: dict[str, list[float]] = {"direct": [], "routed": []}
        for _ in range(ROUNDS):  # interleaved: each round's ratio is against its own baseline
            runs["direct"].append(wrk(direct, 32, 6, direct_headers, {0})["rps"])
            runs["routed"].append(wrk(routed, 32, 6, routed_headers, {0})["rps"])
    finally:
        all_cpus = set(range(os.cpu_count() or 1))
        pin(inference_pid, all_cpus)
        pin(envoy_pid, all_cpus)
    ratios = [r / d for d, r in zip(runs["direct"], runs["routed"], strict=True)]
    return [
        f"| throughput, c=32, model server pinned to its own core (req/s) "
        f"| {spread(runs['direct']).show('{:,.0f}')} | {spread(runs['routed']).show('{:,.0f}')} "
        f"| ratio {spread(ratios).show('{:.3f}')} |"
    ]


def measure_hop(direct: str, routed: str, host: str, direct_headers: dict[str, str]) -> list[str]:
    routed_headers = {
        "Host": host,
        "Authorization": f"Bearer {KEY}",
        "Content-Type": "application/json",
    }
    wrk(direct, 8, 2, direct_headers)  # warm up both paths
    wrk(routed, 8, 2, routed_headers)
    thr: dict[str, list[float]] = {"direct": [], "routed": []}
    lat: dict[str, list[dict[str, float]]] = {"direct": [], "routed": []}
    for _ in range(ROUNDS):  # interleaved: each round's ratio is against its own baseline
        thr["direct"].append(wrk(direct, 32, 6, direct_headers)["rps"])
        thr["routed"].append(wrk(routed, 32, 6, routed_headers)["rps"])
        lat["direct"].append(wrk(direct, 1, 5, direct_headers))
        lat["routed"].append(wrk(routed, 1, 5, routed_headers))
    ratios = [r / d for d, r in zip(thr["direct"], thr["routed"], strict=True)]
    rows = [
        f"| throughput, c=32 (req/s) | {spread(thr['direct']).show('{:,.0f}')} "
        f"| {spread(thr['routed']).show('{:,.0f}')} | ratio {spread(ratios).show('{:.3f}')} |"
    ]
    for q in ("p50", "p99"):
        d = [r[q] for r in lat["direct"]]
        added = [r[q] - x for r, x in zip(lat["routed"], d, strict=True)]
        rows.append(
            f"| latency {q}, c=1 (ms) | {spread(d).show('{:.3f}')} "
            f"| {spread([r[q] for r in lat['routed']]).show('{:.3f}')} "
            f"| added {spread(added).show('{:+.3f}')} ms |"
        )
    return rows


async def measure_change_latency(
    world: World, broker: NatsBroker, prefix: str, n: int
) -> list[str]:
    applied: dict[int, float] = {}

    async def on_applied(msg: Any) -> None:
        event = parse_envelope(msg.data)
        version = event.data.get("endpoints", {}).get("bench")
        if version is not None:
            applied.setdefault(int(version), time.perf_counter())

    sub = await broker.connection.subscribe(f"{prefix}.traffic.applied", cb=on_applied)
    latencies = []
    for i in range(n):
        version = 100 + i
        shares = {"blue": 90, "green": 10} if i % 2 else {"blue": 100, "green": 0}
        started = time.perf_counter()
        await world.endpoint(
            "bench", traffic=shares, keys=(KEY, "bench-secondary"), version=version
        )
        deadline = time.monotonic() + 10
        while version not in applied:
            if time.monotonic() > deadline:
                raise RuntimeError(f"version {version} never applied")
            await asyncio.sleep(0.001)
        latencies.append((applied[version] - started) * 1000)
    await sub.unsubscribe()
    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    return [
        f"| traffic change -> Envoy ACK -> traffic.applied ({n} changes) | p50 {p50:.1f} ms "
        f"| p95 {p95:.1f} ms | max {latencies[-1]:.1f} ms |"
    ]


XDS_NAMES = {
    "Cluster": "CDS",
    "ClusterLoadAssignment": "EDS",
    "Listener": "LDS",
    "RouteConfiguration": "RDS",
    "Secret": "SDS",
}


class TimedAds(AdsServer):
    """The ADS server, noting when each type was first sent and last answered: where the
    push's time goes (the xDS types are sent in order, each once Envoy took the one before)."""

    def __init__(self) -> None:
        super().__init__(node_from_certificate=False)  # plain gRPC: a benchmark's own server
        self.start = time.perf_counter()
        self.sent: dict[str, float] = {}
        self.answered: dict[str, float] = {}

    def restart(self) -> None:
        self.start = time.perf_counter()
        self.sent.clear()
        self.answered.clear()

    async def _on_request(self, stream: Any, request: Any) -> None:
        if request.response_nonce:
            self.answered[short(request.type_url)] = time.perf_counter()
        await super()._on_request(stream, request)

    def _response(self, stream: Any, type_url: str) -> Any | None:
        response = super()._response(stream, type_url)
        if response is not None:
            self.sent.setdefault(short(type_url), time.perf_counter())
        return response

    def phases(self) -> str:
        """`CDS 0-812` etc.: ms from the snapshot's publication to a type's first response
        and to Envoy's last answer (ACK) of it."""
        ms = {t: 1000 * (self.sent[t] - self.start) for t in self.sent}
        return ", ".join(
            f"{XDS_NAMES.get(t, t)} {ms[t]:,.0f}-"
            f"{1000 * (self.answered.get(t, self.start) - self.start):,.0f}"
            for t in sorted(ms, key=ms.__getitem__)
        )


@dataclass
class LargePush:
    """One first push of `endpoints` x 2 deployments to a fresh Envoy, and a change after it."""

    endpoints: int
    build_ms: float
    check_ms: float
    push_ms: float  # until Envoy ACKed every type
    change_ms: float  # one endpoint's traffic changes: build + check + push + ACK
    envoy_cpu_s: float  # Envoy's CPU time from its start to the change's ACK
    envoy_rss_mib: float
    controller_cpu_s: float  # this process (the builder and ADS server) over the same span
    controller_rss_mib: float
    instances: bool  # each deployment had one (health-checked) instance
    phases: str  # TimedAds.phases() of the first push

    @property
    def total_ms(self) -> float:
        return self.build_ms + self.check_ms + self.push_ms


async def large_push(
    root: Path, sup: Supervisor, n_endpoints: int, *, all_stats: bool = False
) -> LargePush:
    """The ADS server in-process against its own Envoy, with health-checked instances that
    refuse connections (a cold fleet). `all_stats`: Envoy keeps every stat (its default).

    Envoy holds a socket per health-checked instance (REST and gRPC: 4 per endpoint here).
    When the machine's hard limit on open files cannot hold them, the deployments get no
    instances (`LargePush.instances` False): the configuration's cost without the checks."""
    cert, key = ensure_local_certificate(root / "tls-large", DOMAIN)
    gateway = Gateway(
        domain=DOMAIN,
        https=Listen("127.0.0.1", free_port()),
        http=Listen("127.0.0.1", free_port()),
        tls=load_material(cert, key),
        jwks=PLACEHOLDER_JWKS,
    )
    # Instances nobody serves (health checks fail fast, as for a cold fleet).
    dead_port = free_port()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    instances = hard == resource.RLIM_INFINITY or 4 * n_endpoints + 1000 < hard

    def endpoint(i: int, blue_share: int) -> Endpoint:
        name = f"ep-{i:05d}"
        deps = tuple(
            Deployment(
                name,
                d,
                1,
                5000,
                1,
                (Upstream("127.0.0.1", dead_port),) if instances else (),
            )
            for d in ("blue", "green")
        )
        return Endpoint(
            name=name,
            version=1,
            auth=KeyAuth((f"key-{i}-a", f"key-{i}-b")),
            traffic=(Share("blue", blue_share), Share("green", 100 - blue_share)),
            mirror=None,
            deployments=deps,
        )

    ads = TimedAds()
    xds_port = free_port()
    server = GrpcServer(
        host="127.0.0.1",
        port=xds_port,
        service_names=[SERVICE_NAME],
        register=lambda s: ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, s),
        unauthenticated=True,  # a benchmark's own Envoy on loopback
    )
    await server.start()
    builder = SnapshotBuilder()
    me = psutil.Process()
    name = f"envoy-large-{n_endpoints}{'-all-stats' if all_stats else ''}"
    pid = envoy_process(sup, root, name, xds_port, None, all_stats=all_stats)
    try:
        envoy = psutil.Process(pid)
        cpu0 = sum(me.cpu_times()[:2])
        endpoints = [endpoint(i, 90) for i in range(n_endpoints)]
        t0 = time.perf_counter()
        snapshot = builder.build(gateway, endpoints)
        t1 = time.perf_counter()
        snapshot.check()
        t2 = time.perf_counter()
        ads.restart()
        ads.set_snapshot(snapshot)
        result = await ads.wait_applied(snapshot, 600)
        t3 = time.perf_counter()
        assert result.outcome is Outcome.ACKED, result
        phases = ads.phases()
        endpoints[7] = endpoint(7, 50)
        t4 = time.perf_counter()
        changed = builder.build(gateway, endpoints)
        changed.check()
        ads.set_snapshot(changed)
        result = await ads.wait_applied(changed, 600)
        t5 = time.perf_counter()
        assert result.outcome is Outcome.ACKED, result
        return LargePush(
            endpoints=n_endpoints,
            build_ms=1000 * (t1 - t0),
            check_ms=1000 * (t2 - t1),
            push_ms=1000 * (t3 - t2),
            change_ms=1000 * (t5 - t4),
            envoy_cpu_s=sum(envoy.cpu_times()[:2]),
            envoy_rss_mib=envoy.memory_info().rss / 2**20,
            controller_cpu_s=sum(me.cpu_times()[:2]) - cpu0,
            controller_rss_mib=me.memory_info().rss / 2**20,
            instances=instances,
            phases=phases,
        )
    finally:
        await server.stop(0)
        proc = next(p for p in sup.running if p.pid == pid)  # 10,000 endpoints: GiBs of Envoy
        sup.running.remove(proc)
        stop_process(proc)


async def measure_large_snapshot(root: Path, sup: Supervisor, n_endpoints: int) -> list[str]:
    push = await large_push(root, sup, n_endpoints)
    return [
        f"| {n_endpoints:,} endpoints x 2 deployments, first push "
        f"| build {push.build_ms:.0f} ms "
        f"| check {push.check_ms:.0f} ms | push + ACK {push.push_ms:.0f} ms "
        f"| total {push.total_ms:.0f} ms |",
        f"| same, one endpoint's traffic changes | | | | total {push.change_ms:.0f} ms |",
    ]


async def control_plane(root: Path, sup: Supervisor, settings: Settings) -> list[str]:
    broker = NatsBroker(settings.nats_url, logger=None)
    await broker.connect()
    await ensure_events_stream(
        broker, stream=settings.events_stream, subject_prefix=settings.events_subject_prefix
    )
    assert settings.mongodb_uri
    mongo = create_mongo_client(settings.mongodb_uri, appname="bench")
    try:
        world = World(mongo[settings.mongodb_database], settings, broker)
        rows = await measure_change_latency(world, broker, settings.events_subject_prefix, 40)
        rows += await measure_large_snapshot(root, sup, 1000)
        return rows
    finally:
        await mongo.close()
        await broker.stop()


async def setup_endpoint(settings: Settings, inference: str) -> None:
    broker = NatsBroker(settings.nats_url, logger=None)
    await broker.connect()
    await ensure_events_stream(
        broker, stream=settings.events_stream, subject_prefix=settings.events_subject_prefix
    )
    assert settings.mongodb_uri
    mongo = create_mongo_client(settings.mongodb_uri, appname="bench")
    try:
        world = World(mongo[settings.mongodb_database], settings, broker)
        await world.deployment("bench", "blue", [inference], concurrency=32)
        await world.deployment("bench", "green", [inference], concurrency=32)
        await world.endpoint("bench", traffic={"blue": 100}, keys=(KEY, "bench-secondary"))
    finally:
        await mongo.close()
        await broker.stop()


def inference_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "sluice.inference",
        "--model", str(MODEL / "model"), "--code", str(MODEL / "onlinescoring"),
        "--scoring-script", "score.py", "--port", str(port),
        "--max-concurrent-requests", "32", "--max-queue", "64", "--log-level", "warning",
    ]  # fmt: skip


def wait_routed(port: int) -> None:
    import http.client

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(
                "POST",
                "/score",
                BODY,
                {"Host": f"bench.{DOMAIN}", "Authorization": f"Bearer {KEY}"},
            )
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the gateway never routed the bench endpoint")


def main() -> None:
    configure_logging(level="warning")  # the in-process ADS server would log every push
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-traffic-") as tmp,
        servers(Path(tmp)) as (sup, base),
    ):
        root = Path(tmp)
        http_port, xds_port, inference_port = free_port(), free_port(), free_port()
        settings = base.model_copy(
            update={
                "mongodb_database": "bench",
                "envoy": EnvoySettings(http_port=http_port, https_port=free_port()),
                "ports": base.ports.model_copy(update={"xds": xds_port}),
            }
        )
        # The instance requires the gateway's header (gateway_auth); direct calls carry it too.
        secret = gateway_auth.secret_for(settings.secret_key or "", "bench", "blue")
        direct_headers = {"Content-Type": "application/json", gateway_auth.HEADER: secret}
        inference = sup.start(
            ProcessSpec(
                name="inference",
                argv=inference_argv(inference_port),
                health=HttpCheck(f"http://127.0.0.1:{inference_port}/ready"),
                env={**os.environ, gateway_auth.ENV: secret},
                ports=[inference_port],
            )
        )
        env = {
            **os.environ,
            **service_env(settings),
            "SLUICE_ENVOY__HTTP_PORT": str(http_port),
            "SLUICE_ENVOY__HTTPS_PORT": str(settings.envoy.https_port),
            "SLUICE_LOG_LEVEL": "info",
            "SLUICE_TRAFFIC_DEBOUNCE_MS": "20",
        }
        sup.start(
            python_service_spec(
                name="traffic",
                module="sluice.traffic",
                host="127.0.0.1",
                port=xds_port,
                env=env,
                python=sys.executable,
            )
        )
        envoy_pid = envoy_process(sup, root, "envoy", xds_port, PlatformPki(settings.pki_folder))
        asyncio.run(setup_endpoint(settings, f"127.0.0.1:{inference_port}"))
        wait_routed(http_port)
        rows = ["| path | direct | through Envoy | |", "|---|---:|---:|---|"]
        rows += measure_hop(
            f"http://127.0.0.1:{inference_port}/score",
            f"http://127.0.0.1:{http_port}/score",
            f"bench.{DOMAIN}",
            direct_headers,
        )
        rows += measure_pinned(
            f"http://127.0.0.1:{inference_port}/score",
            f"http://127.0.0.1:{http_port}/score",
            f"bench.{DOMAIN}",
            inference.pid,
            envoy_pid,
            direct_headers,
        )
        print("\n".join(rows), flush=True)
        control = ["", "| control plane | | | | |", "|---|---|---|---|---|"]
        control += asyncio.run(control_plane(root, sup, settings))
        print("\n".join(control), flush=True)
