"""Traffic controller restarted -> first change live, with and without a bounded re-connect.

When the traffic controller restarts (a crash, an upgrade, supervision bringing it back),
Envoy re-opens its ADS stream after a back-off. Envoy's default is jittered exponential
from 0.5 s up to 30 s; deploy/envoy/bootstrap.yaml bounds it (0.1 s up to 0.5 s). Each round:
stop the controller, start it again (its start counts), change the endpoint's traffic and
time until the controller's `traffic.applied` names the new version (Envoy has ACKed it).

Baseline in the same run: the same rounds against an Envoy whose bootstrap lacks the
`retry_policy` (Envoy's default back-off), interleaved round by round with the bounded
one (BENCH_ROUNDS, default 6: the default back-off makes rounds slow); figures are
median (min-max) over rounds, the ratio bounded / default taken round by round. Real
nats-server, SecantusDB, Envoy and `python -m sluice.traffic` on loopback.

    uv run python bench/run.py xds_restart
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
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
from sluice.common.supervisor import Supervisor, free_port, stop_process
from sluice.testing.stack import servers
from sluice.testing.traffic import World
from sluice.traffic.xds.server import GATEWAY_HEALTH

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stats import ratios, rounds, spread  # bench/stats.py

ROUNDS = rounds(6)
VARIANTS = ("bounded", "default")
# Per round: (controller start until healthy, then until Envoy's stream is open again).
parts: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}


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


async def prepare(
    sup: Supervisor, root: Path, base: Settings, variant: str, stack: contextlib.AsyncExitStack
) -> Callable[[int], Awaitable[float]]:
    """A variant's controller, Envoy and endpoint; returns its round: seconds from
    'controller stopped' to 'a change made after its restart is live'."""
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
    stack.push_async_callback(broker.stop)
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
    stack.push_async_callback(subscription.unsubscribe)
    assert settings.mongodb_uri
    mongo = create_mongo_client(settings.mongodb_uri, appname="bench")
    stack.push_async_callback(mongo.close)
    world = World(mongo[settings.mongodb_database], settings, broker)
    dead = f"127.0.0.1:{free_port()}"  # ACKs do not need a live instance
    await world.deployment("bench", "blue", [dead])
    await world.deployment("bench", "green", [dead])
    await world.endpoint("bench", traffic={"blue": 100})

    controller = [sup.start(controller_spec(settings, variant))]
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

    async def one_round(i: int) -> float:
        stop_process(controller[0])
        started = time.perf_counter()
        controller[0] = sup.start(controller_spec(settings, variant))
        up = time.perf_counter()
        await until(connected, "Envoy re-connected")
        back = time.perf_counter()
        version = 10 + i
        await world.endpoint(
            "bench", traffic={"blue": 100 - i % 2 * 10, "green": i % 2 * 10}, version=version
        )
        await until(lambda v=version: v in applied, f"version {version} applied")
        parts[variant].append((up - started, back - up))
        return applied[version] - started

    return one_round


async def measure(sup: Supervisor, root: Path, base: Settings) -> dict[str, list[float]]:
    """Both variants set up side by side, then ROUNDS rounds, one restart of each per round."""
    async with contextlib.AsyncExitStack() as stack:
        rounds_of = {v: await prepare(sup, root, base, v, stack) for v in VARIANTS}
        seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for i in range(ROUNDS):
            for variant in VARIANTS[i % 2 :] + VARIANTS[: i % 2]:
                seconds[variant].append(await rounds_of[variant](i))
        return seconds


def main() -> None:
    configure_logging(level="warning")
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-xds-restart-") as tmp,
        servers(Path(tmp)) as (sup, base),
    ):
        results = asyncio.run(measure(sup, Path(tmp), base))
    print(f"| Envoy's ADS re-connect, restart -> first change live, s | {ROUNDS} rounds |")
    print("|---|---:|")
    for label, key in (
        ("bounded (bootstrap.yaml: 0.1 s .. 0.5 s)", "bounded"),
        ("Envoy default (0.5 s .. 30 s), baseline", "default"),
    ):
        print(f"| {label} | {spread(results[key]).show()} |")
    for key in VARIANTS:
        starts, reconnects = zip(*parts[key], strict=True)
        print(
            f"{key}: controller start {spread(starts).show()} s; "
            f"Envoy back on it {spread(reconnects).show()} s"
        )
    ratio = spread(ratios(results["bounded"], results["default"]))
    print(
        f"restart -> first change live, bounded / default per round: {ratio.show()} "
        f"(target: bounded p95 <= 2 s; worst bounded round {max(results['bounded']):.2f} s)"
    )
