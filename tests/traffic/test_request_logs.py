"""`sluice online-endpoint logs`: requests through the real gateway are listed from the
metrics service's buffer of Envoy's access log, filtered by deployment and status, with the
request id each client got back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from sluice.common.supervisor import Supervisor
from sluice.testing.plugin import EnvoyGateway, ServiceStarter
from sluice.testing.traffic import (
    GatewayPorts,
    Upstream,
    World,
    eventually,
    healthy_hosts,
    start_controller,
)
from sluice.testing.wait import wait_for

pytestmark = pytest.mark.integration
KEY = "primary-key-1"


async def test_recent_requests_by_deployment_and_status(
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
    blue, green = upstreams("blue"), upstreams("green")
    green.behaviour.status = 500
    for up in (blue, green):
        await world.deployment("logged", up.name, [up.address])
    await world.deployment("logged", "gone", ["127.0.0.1:9"])  # nothing listens: Envoy's 503
    await world.endpoint("logged", traffic={"blue": 100})
    for name in ("blue", "green"):
        await asyncio.to_thread(
            eventually, lambda name=name: healthy_hosts(traffic, "logged", name), bool
        )

    def send() -> dict[str, list[str]]:
        eventually(lambda: traffic.score("logged", KEY)[0], lambda s: s == 200)
        ids: dict[str, list[str]] = {"blue": [], "green": [], "gone": [], "401": []}
        for _ in range(5):
            status, headers, _ = traffic.score("logged", KEY)
            assert status == 200
            ids["blue"].append(headers["x-request-id"])
            status, headers, _ = traffic.score("logged", KEY, deployment="green")
            assert status == 424  # Azure's answer to a model's error status
            ids["green"].append(headers["x-request-id"])
            status, headers, _ = traffic.score("logged", KEY, deployment="gone")
            assert status == 503
            ids["gone"].append(headers["x-request-id"])
        status, headers, _ = traffic.score("logged", "wrong-key")
        assert status == 401
        ids["401"].append(headers["x-request-id"])
        return ids

    ids = await asyncio.to_thread(send)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
        "SLUICE_METRICS_ADDRESS": metrics.address,
        "SLUICE_ADMIN_TOKEN": metrics.settings.admin_token or "",
    }

    def logs(*args: str) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "sluice.sdk.cli", "online-endpoint", "logs", "-n", "logged",
             *args, "-o", "json"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def all_logged() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = logs("--since", "10m")
        seen = {r["request_id"] for r in rows}
        wanted = {i for group in ids.values() for i in group}
        return rows if wanted <= seen else None

    rows = await asyncio.to_thread(wait_for, all_logged, "every request in the logs", 20)
    errors = await asyncio.to_thread(logs, "--status", "5xx")
    assert [r["request_id"] for r in errors] == ids["gone"]
    assert {(r["deployment"], r["status"], r["method"]) for r in errors} == {("gone", 503, "POST")}
    assert all(r["flags"] for r in errors)  # Envoy's reason: no healthy upstream / refused
    model_errors = await asyncio.to_thread(logs, "--status", "424")
    assert [r["request_id"] for r in model_errors] == ids["green"]
    assert all(r["upstream"] == green.address for r in model_errors)
    blue_rows = await asyncio.to_thread(logs, "--deployment-name", "blue", "--limit", "3")
    assert [r["request_id"] for r in blue_rows] == ids["blue"][-3:]
    (denied,) = [r for r in rows if r["status"] == 401]
    assert denied["deployment"] == "" and denied["request_id"] == ids["401"][0]
    bad = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "sluice.sdk.cli", "online-endpoint", "logs", "-n", "logged",
         "--status", "6xx"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and "status must be" in bad.stderr
