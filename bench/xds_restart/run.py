"""Traffic controller restarted -> first change live, with and without a bounded re-connect.

When the traffic controller restarts (a crash, an upgrade, supervision bringing it back),
Envoy re-opens its ADS stream after a back-off. Envoy's default is jittered exponential
from 0.5 s up to 30 s; deploy/envoy/bootstrap.yaml bounds it (0.1 s up to 0.5 s). Each round:
stop the controller, start it again (its start counts), change the endpoint's traffic and
time until the controller's `traffic.applied` names the new version (Envoy has ACKed it).

Baseline in the same run: the same rounds against an Envoy whose bootstrap lacks the
`retry_policy` (Envoy's default back-off). Real nats-server, SecantusDB, Envoy and
`python -m sluice.traffic` on loopback.

    uv run python bench/run.py xds_restart
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from faststream.nats import NatsBroker

from sluice.common.components import (
    ENVOY_BOOTSTRAP,
    envoy_spec,
    find_project_file,
    python_service_spec,
    render_envoy_bootstrap,
)
from sluice.common.events import ensure_events_stream, parse_envelope
from sluice.common.health import GrpcHealthCheck
from sluice.common.log import configure_logging
from sluice.common.mongo import create_mongo_client
from sluice.common.pki import XDS_SERVER, PlatformPki
from sluice.common.settings import EnvoySettings, Settings, service_env
from sluice.common.supervisor import RunningProcess, Supervisor, free_port, stop_process
from sluice.testing.stack import servers
from sluice.testing.traffic import World
from sluice.traffic.xds.server import GATEWAY_HEALTH

ROUNDS = {"bounded": 20, "default": 6}  # Envoy's default back-off makes its rounds slow
# Per round: (controller start until healthy, then until Envoy's stream is open again).
parts: dict[str, list[tuple[float, float]]] = {"bounded": [], "default": []}


def bootstrap(root: Path, variant: str, admin_port: int, settings: Settings) -> Path:
    config: dict[str, Any] = render_envoy_bootstrap(
        find_project_file(ENVOY_BOOTSTRAP),
        admin_port=admin_port,
        xds_host="127.0.0.1",
        xds_port=settings.ports.xds,
        node_id=f"bench-{variant}",
        tls=PlatformPki(settings.pki_folder).client(f"bench-{variant}"),
    )
    if variant == "default":
        del config["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"][
            "retry_policy"
        ]
    path = root / f"envoy-{variant}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def controller_spec(settings: Settings, variant: str) -> Any:
    env = {**os.environ, **service_env(settings), "SLUICE_TRAFFIC_DEBOUNCE_MS": "20"}
    spec = python_service_spec(
        name="traffic",  # the name picks the mutual-TLS health check of the xDS port
        module="sluice.traffic",
        host="127.0.0.1",
        port=settings.ports.xds,
        env=env,
        python=sys.executable,
    )
    return dataclasses.replace(spec, name=f"traffic-{variant}")


async def measure(sup: Supervisor, root: Path, base: Settings, variant: str) -> list[float]:
    """Seconds from 'controller stopped' to 'a change made after its restart is live'."""
    settings = base.model_copy(
        update={
            "mongodb_database": f"bench_{variant}",
            "events_stream": f"BENCH_{variant.upper()}",
            "events_subject_prefix": f"bench{variant}.sluice.events",
            "ports": base.ports.model_copy(update={"xds": free_port()}),
            "envoy": EnvoySettings(http_port=free_port(), https_port=free_port()),
        }
    )
    broker = NatsBroker(settings.nats_url, logger=None)
    await broker.connect()
    await ensure_events_stream(
        broker, stream=settings.events_stream, subject_prefix=settings.events_subject_prefix
    )
    applied: dict[int, float] = {}

    async def on_applied(msg: Any) -> None:
        version = parse_envelope(msg.data).data.get("endpoints", {}).get("bench")
        if version is not None:
            applied.setdefault(int(version), time.perf_counter())

    subscription = await broker.connection.subscribe(
        f"{settings.events_subject_prefix}.traffic.applied", cb=on_applied
    )
    assert settings.mongodb_uri
    mongo = create_mongo_client(settings.mongodb_uri, appname="bench")
    world = World(mongo[settings.mongodb_database], settings, broker)
    dead = f"127.0.0.1:{free_port()}"  # ACKs do not need a live instance
    await world.deployment("bench", "blue", [dead])
    await world.deployment("bench", "green", [dead])
    await world.endpoint("bench", traffic={"blue": 100})

    controller: RunningProcess = sup.start(controller_spec(settings, variant))
    admin = free_port()
    path = bootstrap(root, variant, admin, settings)
    sup.start(envoy_spec(host="127.0.0.1", admin_port=admin, bootstrap=path, listener_ports=[]))
    connected = GrpcHealthCheck(
        f"127.0.0.1:{settings.ports.xds}",
        service=GATEWAY_HEALTH,
        pki=str(settings.pki_folder),
        server_name=XDS_SERVER,
    )

    async def until(condition: Any, what: str, deadline_s: float = 60) -> None:
        end = time.monotonic() + deadline_s
        while not condition():
            if time.monotonic() > end:
                raise RuntimeError(f"{variant}: {what} not within {deadline_s}s")
            await asyncio.sleep(0.002)

    await until(connected, "first Envoy connection")
    seconds = []
    try:
        for i in range(ROUNDS[variant]):
            stop_process(controller)
            started = time.perf_counter()
            controller = sup.start(controller_spec(settings, variant))
            up = time.perf_counter()
            await until(connected, "Envoy re-connected")
            back = time.perf_counter()
            version = 10 + i
            await world.endpoint(
                "bench", traffic={"blue": 100 - i % 2 * 10, "green": i % 2 * 10}, version=version
            )
            await until(lambda v=version: v in applied, f"version {version} applied")
            seconds.append(applied[version] - started)
            parts[variant].append((up - started, back - up))
    finally:
        await subscription.unsubscribe()
        await mongo.close()
        await broker.stop()
    return seconds


def summary(seconds: list[float]) -> tuple[float, float, float]:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95, ordered[-1]


def main() -> None:
    configure_logging(level="warning")
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-xds-restart-") as tmp,
        servers(Path(tmp)) as (sup, base),
    ):
        results = {v: asyncio.run(measure(sup, Path(tmp), base, v)) for v in ROUNDS}
    bounded, default = summary(results["bounded"]), summary(results["default"])
    print(f"load before/after: {os.getloadavg()[0]:.2f} (1-min average)")
    print("| Envoy's ADS re-connect | rounds | p50 s | p95 s | max s |")
    print("|---|---:|---:|---:|---:|")
    for label, key, (p50, p95, worst) in (
        ("bounded (bootstrap.yaml: 0.1 s .. 0.5 s)", "bounded", bounded),
        ("Envoy default (0.5 s .. 30 s), baseline", "default", default),
    ):
        print(f"| {label} | {len(results[key])} | {p50:.2f} | {p95:.2f} | {worst:.2f} |")
    for key in ROUNDS:
        starts, reconnects = zip(*parts[key], strict=True)
        print(
            f"{key}: controller start p50 {statistics.median(starts):.2f} s, max "
            f"{max(starts):.2f} s; Envoy back on it p50 {statistics.median(reconnects):.2f} s, "
            f"max {max(reconnects):.2f} s"
        )
    print(
        f"restart -> first change live, bounded / default: p50 {bounded[0] / default[0]:.2f}x, "
        f"p95 {bounded[1] / default[1]:.2f}x (target: bounded p95 <= 2 s)"
    )
