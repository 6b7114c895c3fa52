"""Envoy keeps its last good configuration: after a NACK, and while the controller is down."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable

from sluice.common.events import EventEnvelope
from sluice.common.supervisor import Supervisor, stop_process
from sluice.testing.traffic import Traffic, Upstream, World, eventually, restart
from sluice.testing.wait import wait_for_async

KEY = "primary-key-1"


async def wait_event(
    events: list[EventEnvelope], match: Callable[[EventEnvelope], bool], deadline_s: float = 15
) -> EventEnvelope:
    async def matching() -> EventEnvelope | None:
        return next((e for e in events if match(e)), None)

    return await wait_for_async(matching, "a matching event", deadline_s)


def envoy_stat(traffic: Traffic, name: str) -> int:
    url = f"{traffic.envoy.admin_url}/stats?filter=^{name}$"
    with urllib.request.urlopen(url) as r:  # noqa: S310 - Envoy's loopback admin, http only
        text = r.read().decode().strip()
    return int(text.rsplit(":", 1)[1]) if text else 0


async def test_rejected_config_is_reported_and_the_last_good_one_keeps_serving(
    traffic: Traffic,
    world: World,
    upstreams: Callable[[str], Upstream],
    traffic_events: list[EventEnvelope],
) -> None:
    blue, green = upstreams("blue"), upstreams("green")
    for name in ("good", "bad"):
        await world.deployment(name, "blue", [blue.address])
        await world.endpoint(name, traffic={"blue": 100})
    eventually(lambda: traffic.score("bad", KEY)[0], lambda s: s == 200)
    rejected_before = envoy_stat(traffic, "http.sluice_http.rds.sluice_routes.update_rejected")

    # A value the registry never writes; Envoy refuses a negative route timeout.
    await world.raw_deployment_update(
        "bad", "blue", {"spec.request_settings.request_timeout_ms": -5}
    )
    event = await wait_event(traffic_events, lambda e: e.type == "sluice.traffic.rejected")
    assert event.data["endpoints"] == {"bad": 1}
    assert "duration" in event.data["error"].lower()
    assert event.data["type"] == "RouteConfiguration"
    assert (
        envoy_stat(traffic, "http.sluice_http.rds.sluice_routes.update_rejected") > rejected_before
    )

    # Both endpoints keep serving; later changes to others still go out.
    assert traffic.score("bad", KEY)[0] == 200
    await world.deployment("good", "green", [green.address])
    await world.endpoint("good", traffic={"blue": 0, "green": 100}, version=2)
    _, _, body = eventually(
        lambda: traffic.score("good", KEY), lambda r: r[0] == 200 and b"green" in r[2]
    )
    assert json.loads(body)["deployment"] == "green"
    assert traffic.score("bad", KEY)[0] == 200
    applied = await wait_event(
        traffic_events,
        lambda e: e.type == "sluice.traffic.applied" and e.data["endpoints"].get("good") == 2,
    )
    assert applied.data["endpoints"]["bad"] == 1

    # Fixing the document lets the endpoint's changes through again.
    await world.deployment("bad", "blue", [blue.address], timeout_ms=4000)
    await world.endpoint("bad", traffic={"blue": 100}, version=3)
    await wait_event(
        traffic_events,
        lambda e: e.type == "sluice.traffic.applied" and e.data["endpoints"].get("bad") == 3,
    )


async def test_envoy_keeps_serving_while_the_controller_restarts_then_resyncs(
    traffic: Traffic,
    world: World,
    upstreams: Callable[[str], Upstream],
    supervisor: Supervisor,
) -> None:
    blue, green = upstreams("blue"), upstreams("green")
    await world.deployment("steady", "blue", [blue.address])
    await world.deployment("steady", "green", [green.address])
    await world.endpoint("steady", traffic={"blue": 100})
    eventually(lambda: traffic.score("steady", KEY)[0], lambda s: s == 200)

    stop_process(traffic.process)
    for _ in range(20):
        status, headers, _ = traffic.score("steady", KEY)
        assert (status, headers["azureml-model-deployment"]) == (200, "blue")
    # A change while nobody listens to events: the restarted controller reads it from MongoDB.
    await world.endpoint("steady", traffic={"green": 100}, version=2)
    traffic = restart(traffic, supervisor)
    status, headers, _ = eventually(
        lambda: traffic.score("steady", KEY),
        lambda r: r[1].get("azureml-model-deployment") == "green",
    )
    assert status == 200
