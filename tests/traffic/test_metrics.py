"""Requests through the real gateway appear, exactly, in the right deployment's metrics.

Envoy (session), our traffic controller and metrics service as processes, model-server
stand-ins: a 70/30 split with a 50% mirror, every request counted where it was served,
mirrored copies counted for the mirror target only, Envoy's own 401s for the endpoint,
and latency quantiles within the sketch's error of what the client measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest

from sluice.common.supervisor import Supervisor, free_port
from sluice.metrics.envoy_stats import DROPPED, WRITTEN
from sluice.testing.plugin import EnvoyGateway, ServiceStarter
from sluice.testing.traffic import (
    GatewayPorts,
    Upstream,
    World,
    eventually,
    healthy_hosts,
    start_controller,
)
from sluice.testing.wait import wait_for_async
from sluice.v1 import metrics_pb2, metrics_pb2_grpc

pytestmark = pytest.mark.integration
KEY = "primary-key-1"
N = 120
# The client's own side of a request (httpx, the event loop, the loopback): about 10 ms on
# a busy 2-core machine, and it grows with the load (measured 11 ms at p90 at load 8), so a
# quarter of the client's figure is allowed on top.
LOOPBACK_MS = 10.0
LOOPBACK_SHARE = 0.25
# Requests of the drop test: 56 KB records, Envoy's 256 KiB buffer holds 4 of them.
BURST = 40


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def by_deployment(points: Any) -> dict[str, dict[str, float]]:
    """Sum of requests and mirrored copies per deployment over every point."""
    out: dict[str, dict[str, float]] = {}
    for p in points:
        row = out.setdefault(p.deployment_name, {"requests": 0, "mirrored": 0})
        row["requests"] += p.requests
        row["mirrored"] += p.mirrored_requests
    return out


async def test_requests_through_envoy_are_counted_exactly_where_served(
    start_service: ServiceStarter,
    supervisor: Supervisor,
    envoy_gateway: EnvoyGateway,
    gateway_ports: GatewayPorts,
    world: World,
    upstreams: Callable[[str], Upstream],
) -> None:
    metrics = start_service("metrics", envoy=envoy_gateway)
    traffic = start_controller(
        metrics.settings,
        supervisor,
        envoy_gateway,
        gateway_ports,
        {"SLUICE_TRAFFIC_ACCESS_LOG": "true"},
    )
    blue, green, shadow = upstreams("blue"), upstreams("green"), upstreams("shadow")
    blue.behaviour.delay_s = 0.02
    green.behaviour.delay_s = 0.05
    for up in (blue, green, shadow):
        await world.deployment("metered", up.name, [up.address])
    await world.endpoint("metered", traffic={"blue": 70, "green": 30}, mirror={"shadow": 50})
    # Envoy has health-checked every instance before the first request: a request that found
    # no healthy host would be counted for the endpoint but reach no upstream.
    for name in ("blue", "green", "shadow"):
        await asyncio.to_thread(
            eventually, lambda name=name: healthy_hosts(traffic, "metered", name), bool
        )
    # Then the routes: until they exist, requests are 404s that belong to no endpoint.
    await asyncio.to_thread(
        eventually,
        lambda: traffic.score("metered", KEY)[1].get("azureml-model-deployment"),
        lambda d: d in ("blue", "green"),
    )
    # The warm-up requests are counted too: the counts below are what the upstreams saw.

    latencies: dict[str, list[float]] = {"blue": [], "green": []}

    def load() -> None:
        for _ in range(N):
            started = time.perf_counter()
            status, headers, _ = traffic.score("metered", KEY)
            elapsed_ms = (time.perf_counter() - started) * 1000
            assert status == 200
            latencies[headers["azureml-model-deployment"]].append(elapsed_ms)
        for _ in range(5):
            assert traffic.score("metered", "wrong-key")[0] == 401

    await asyncio.to_thread(load)
    served = {"blue": blue.scored, "green": green.scored}
    copies = eventually(lambda: shadow.scored, lambda n: n > 0)  # copies are asynchronous

    channel = grpc.aio.insecure_channel(metrics.address)
    stub = metrics_pb2_grpc.MetricsStub(channel)
    auth = (("authorization", f"Bearer {metrics.settings.admin_token}"),)
    request = metrics_pb2.GetEndpointMetricsRequest(endpoint_name="metered")
    try:
        want_total = served["blue"] + served["green"] + 5
        counted: dict[str, dict[str, float]] = {}

        async def all_counted() -> bool:
            nonlocal counted, copies
            copies = shadow.scored
            counted = by_deployment((await stub.GetEndpointMetrics(request, metadata=auth)).points)
            return (
                counted.get("", {}).get("requests") == want_total
                and counted.get("shadow", {}).get("requests") == copies
            )

        # Within 5 s of the last answer (the target); the asserts below name what is off.
        with contextlib.suppress(AssertionError):
            await wait_for_async(all_counted, "every request counted", deadline=5)
        assert counted["blue"] == {"requests": served["blue"], "mirrored": 0}
        assert counted["green"] == {"requests": served["green"], "mirrored": 0}
        assert counted["shadow"] == {"requests": copies, "mirrored": copies}
        # The endpoint's total is what clients sent: the 401s in, the mirrored copies out.
        assert counted[""]["requests"] == served["blue"] + served["green"] + 5
        assert counted[""]["mirrored"] == 0

        # Quantiles: Envoy measures from the first byte in to the last byte out, which is
        # what the client saw minus the client's own side of the loopback: never more than
        # the client's quantile (+ the sketch's 1%), and less by at most the client's side.
        one = await stub.GetEndpointMetrics(
            metrics_pb2.GetEndpointMetricsRequest(
                endpoint_name="metered", deployment_name="blue", step_s=3600
            ),
            metadata=auth,
        )
        points = [p for p in one.points if p.deployment_name == "blue"]
        if len(points) == 1:  # the load did not straddle an hour boundary
            point = points[0]
            accuracy = one.latency_relative_accuracy
            assert accuracy == pytest.approx(0.01)
            for q, got in ((0.5, point.latency_p50_ms), (0.9, point.latency_p90_ms)):
                client = quantile(latencies["blue"], q)
                client_side = LOOPBACK_MS + LOOPBACK_SHARE * client
                assert client * (1 - accuracy) - client_side <= got <= client * (1 + accuracy), (
                    q,
                    got,
                )

        # Bad input: a clear error, naming the problem.
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetEndpointMetrics(
                metrics_pb2.GetEndpointMetricsRequest(endpoint_name="nope"), metadata=auth
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'nope'" in (missing.value.details() or "")
        inverted = metrics_pb2.GetEndpointMetricsRequest(endpoint_name="metered")
        inverted.window.start.FromSeconds(int(time.time()))
        inverted.window.end.FromSeconds(int(time.time()) - 60)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.GetEndpointMetrics(inverted, metadata=auth)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not before its end" in (bad.value.details() or "")
    finally:
        await channel.close()


async def test_connections_and_envoys_access_log_counters_from_its_stats(
    start_service: ServiceStarter,
    supervisor: Supervisor,
    envoy_gateway: EnvoyGateway,
    gateway_ports: GatewayPorts,
    world: World,
    upstreams: Callable[[str], Upstream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ConnectionsActive: the gateway's open connections to the deployment's instances,
    streamed by Envoy's stats sink and attributed by what the traffic controller recorded
    for the cluster; Envoy's own count of access-log entries written and dropped, on
    Prometheus."""
    prometheus = free_port()
    monkeypatch.setenv("SLUICE_METRICS_ENVOY_STATS_INTERVAL_S", "0.5")
    monkeypatch.setenv("SLUICE_PROMETHEUS_PORT", str(prometheus))
    metrics = start_service("metrics", envoy=envoy_gateway)
    monkeypatch.delenv("SLUICE_PROMETHEUS_PORT")  # the metrics service's only
    traffic = start_controller(
        metrics.settings,
        supervisor,
        envoy_gateway,
        gateway_ports,
        {"SLUICE_TRAFFIC_ACCESS_LOG": "true"},
    )
    blue = upstreams("blue")
    await world.deployment("wired", "blue", [blue.address])
    await world.endpoint("wired", traffic={"blue": 100})
    await asyncio.to_thread(eventually, lambda: healthy_hosts(traffic, "wired", "blue"), bool)
    await asyncio.to_thread(
        eventually,
        lambda: traffic.score("wired", KEY)[1].get("azureml-model-deployment"),
        lambda d: d == "blue",
    )
    for _ in range(10):  # Envoy keeps its upstream connections open between requests
        assert (await asyncio.to_thread(traffic.score, "wired", KEY))[0] == 200

    channel = grpc.aio.insecure_channel(metrics.address)
    stub = metrics_pb2_grpc.MetricsStub(channel)
    auth = (("authorization", f"Bearer {metrics.settings.admin_token}"),)
    request = metrics_pb2.GetEndpointMetricsRequest(endpoint_name="wired")
    try:
        connections: dict[str, int] = {}

        async def blue_connected() -> bool:
            nonlocal connections
            points = (await stub.GetEndpointMetrics(request, metadata=auth)).points
            connections = {p.deployment_name: p.active_connections for p in points}
            return connections.get("blue", 0) >= 1

        with contextlib.suppress(AssertionError):  # the asserts below say what is missing
            await wait_for_async(blue_connected, "blue's connections counted", deadline=30)
        assert connections.get("blue", 0) >= 1, connections
        assert connections.get("", 0) >= connections["blue"]  # the endpoint: its deployments'
    finally:
        await channel.close()

    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{prometheus}/metrics")).text
    label = f'{{envoy="{envoy_gateway.node_id}@127.0.0.1"}}'
    assert f"sluice_envoy_up{label} 1.0" in text
    written = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"sluice_envoy_access_log_entries_written_total{label}")
    ]
    assert written and written[0] > 0
    assert f"sluice_envoy_access_log_entries_dropped_total{label}" in text
    assert f"sluice_gateway_client_connections{label}" in text


def _admin_counters(admin_url: str) -> tuple[int, int]:
    """Envoy's own (entries buffered, entries lost) of its access log, read directly."""
    reply = httpx.get(
        f"{admin_url}/stats",
        params={"format": "json", "filter": r"^access_logs\.fluentd\."},
        timeout=10,
    )
    stats = {s["name"]: int(s["value"]) for s in reply.json()["stats"] if "value" in s}
    return stats.get(WRITTEN, 0), stats.get(DROPPED, 0)


def _exported(text: str, family: str, label: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{family}{label} "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _burst(port: int, request: bytes, count: int) -> set[int]:
    """`count` copies of a raw HTTP/1.1 request over one keep-alive connection: the statuses.
    (Raw bytes: an HTTP client parsing a 56 KB URL per request takes 20 times longer.)"""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses = set()
    try:
        for _ in range(count):
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            statuses.add(int(lines[0].split(" ")[1]))
            length = next(
                (
                    int(v)
                    for k, _, v in (h.partition(":") for h in lines[1:])
                    if k.lower() == "content-length"
                ),
                0,
            )
            await reader.readexactly(length)
    finally:
        writer.close()
    return statuses


async def test_access_log_entries_envoy_drops_are_counted_and_exported(
    start_service: ServiceStarter,
    supervisor: Supervisor,
    envoy_gateway: EnvoyGateway,
    gateway_ports: GatewayPorts,
    world: World,
    upstreams: Callable[[str], Upstream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The metrics service is down while a burst of large records goes through Envoy: Envoy
    keeps what fits its buffer (256 KiB per worker) and loses the rest. Every request is
    accounted for: what Envoy kept arrives and is counted once the service is back, what it
    lost is on Prometheus (`sluice_envoy_access_log_entries_dropped_total`) and in the
    service's log."""
    prometheus = free_port()
    monkeypatch.setenv("SLUICE_METRICS_ENVOY_STATS_INTERVAL_S", "0.5")
    monkeypatch.setenv("SLUICE_PROMETHEUS_PORT", str(prometheus))
    metrics = start_service("metrics", envoy=envoy_gateway)
    monkeypatch.delenv("SLUICE_PROMETHEUS_PORT")  # the metrics service's only
    traffic = start_controller(
        metrics.settings,
        supervisor,
        envoy_gateway,
        gateway_ports,
        {"SLUICE_TRAFFIC_ACCESS_LOG": "true"},
    )
    blue = upstreams("blue")
    await world.deployment("lossy", "blue", [blue.address])
    await world.endpoint("lossy", traffic={"blue": 100})
    await asyncio.to_thread(
        eventually,
        lambda: traffic.score("lossy", KEY)[1].get("azureml-model-deployment"),
        lambda d: d == "blue",
    )
    request = metrics_pb2.GetEndpointMetricsRequest(endpoint_name="lossy")

    async def points(address: str) -> Any:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = metrics_pb2_grpc.MetricsStub(channel)
            auth = (("authorization", f"Bearer {metrics.settings.admin_token}"),)
            return (await stub.GetEndpointMetrics(request, metadata=auth)).points

    # The access log's connection is open (a served request arrived) before the service stops.
    async def served() -> bool:
        return any(p.requests for p in await points(metrics.address))

    await wait_for_async(served, "the warm-up request counted", deadline=15)
    buffered_before, lost_before = await asyncio.to_thread(_admin_counters, envoy_gateway.admin_url)
    start_service.stop(metrics)
    # Each record carries its path: 56 KB (Envoy takes 60 KB of headers).
    burst = (
        f"POST /score?pad={'x' * 56_000} HTTP/1.1\r\nhost: {traffic.host('lossy')}\r\n"
        "authorization: Bearer wrong-key\r\ncontent-length: 2\r\n\r\n{}"
    ).encode()
    statuses = await _burst(gateway_ports.http, burst, BURST)
    buffered, lost = await asyncio.to_thread(_admin_counters, envoy_gateway.admin_url)
    assert statuses == {401}
    buffered -= buffered_before
    lost -= lost_before
    assert lost > 0, "the burst did not fill Envoy's buffer"
    assert buffered + lost == BURST  # Envoy accounts for every request

    # Back on the same ports: what Envoy kept arrives, once (the burst's 401s, for the
    # endpoint), and its count of what it lost is exported.
    monkeypatch.setenv("SLUICE_PROMETHEUS_PORT", str(prometheus))
    metrics = start_service("metrics", envoy=envoy_gateway)
    counted = 0

    async def all_kept_counted() -> bool:
        nonlocal counted
        counted = sum(
            p.responses_by_status_code["401"]
            for p in await points(metrics.address)
            if not p.deployment_name
        )
        return counted >= buffered

    with contextlib.suppress(AssertionError):
        await wait_for_async(all_kept_counted, "the kept records counted", deadline=20)
    assert counted == buffered

    label = f'{{envoy="{envoy_gateway.node_id}@127.0.0.1"}}'
    family = "sluice_envoy_access_log_entries_dropped_total"

    async def drops_exported() -> float | None:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{prometheus}/metrics")).text
        value = _exported(text, family, label)
        return value if value is not None and value >= lost_before + lost else None

    exported = await wait_for_async(drops_exported, "the drops on Prometheus", deadline=20)
    assert exported == lost_before + lost
    assert "envoy_dropped_access_log_entries" in metrics.process.log_path.read_text()
