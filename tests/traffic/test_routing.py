"""Routing through a real Envoy configured by a real traffic controller process."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from sluice.common.events import EventEnvelope
from sluice.testing.traffic import Traffic, Upstream, World, eventually
from sluice.testing.wait import wait_for_async

KEY = "primary-key-1"


async def test_split_pin_and_not_found_answers(
    traffic: Traffic, world: World, upstreams: Callable[[str], Upstream]
) -> None:
    blue, green = upstreams("blue"), upstreams("green")
    await world.deployment("shop", "blue", [blue.address])
    await world.deployment("shop", "green", [green.address])
    await world.endpoint("shop", traffic={"blue": 100, "green": 0})

    status, headers, body = eventually(lambda: traffic.score("shop", KEY), lambda r: r[0] == 200)
    assert json.loads(body)["deployment"] == "blue"
    assert headers["azureml-model-deployment"] == "blue"
    assert headers.get("x-request-id")
    assert json.loads(body)["path"] == "/score"

    # The pin header reaches green at 0%; the same through /endpoints/<name>/ and HTTPS.
    for kwargs in ({}, {"path_based": True}, {"tls": True}):
        status, headers, body = traffic.score("shop", KEY, deployment="green", **kwargs)
        assert (status, json.loads(body)["deployment"]) == (200, "green"), kwargs
        assert json.loads(body)["path"] == "/score"
        assert headers["azureml-model-deployment"] == "green"

    status, _, body = traffic.score("shop", KEY, deployment="purple")
    assert status == 404
    assert "azureml-model-deployment" in json.loads(body)["message"]

    status, _, body = traffic.score("nowhere", KEY)
    assert status == 404 and "no online endpoint" in json.loads(body)["message"]

    # No deployment above 0% and no pin: 404, with the reason.
    await world.endpoint("shop", traffic={"blue": 0, "green": 0}, version=2)
    status, _, body = eventually(lambda: traffic.score("shop", KEY), lambda r: r[0] == 404)
    assert "traffic" in json.loads(body)["message"]
    assert traffic.score("shop", KEY, deployment="blue")[0] == 200


async def test_split_follows_the_weights(
    traffic: Traffic, world: World, upstreams: Callable[[str], Upstream]
) -> None:
    blue, green = upstreams("blue"), upstreams("green")
    await world.deployment("split", "blue", [blue.address])
    await world.deployment("split", "green", [green.address])
    await world.endpoint("split", traffic={"blue": 70, "green": 30})
    eventually(lambda: traffic.score("split", KEY, deployment="green"), lambda r: r[0] == 200)
    served = Counter(
        traffic.score("split", KEY)[1]["azureml-model-deployment"] for _ in range(2000)
    )
    assert abs(served["green"] / 2000 - 0.30) <= 0.05, served
    assert served["blue"] + served["green"] == 2000


async def test_safe_rollout_steps_fail_no_request(
    traffic: Traffic,
    world: World,
    upstreams: Callable[[str], Upstream],
    traffic_events: list[EventEnvelope],
) -> None:
    """Blue 100% -> green created at 0% -> mirror 10% -> 90/10 -> 0/100 -> blue deleted,
    with a client sending requests all the while (stand-in instances; the provisioner's
    end-to-end version lives with the platform tests)."""
    blue, green = upstreams("blue"), upstreams("green")
    await world.deployment("roll", "blue", [blue.address])
    await world.endpoint("roll", traffic={"blue": 100})
    eventually(lambda: traffic.score("roll", KEY)[0], lambda s: s == 200)

    statuses: Counter[int] = Counter()
    served: Counter[str] = Counter()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            status, headers, _ = traffic.score("roll", KEY)
            statuses[status] += 1
            served[headers.get("azureml-model-deployment", "")] += 1

    worker = threading.Thread(target=client)
    worker.start()
    try:
        version = 1

        async def step(**endpoint: Any) -> None:
            nonlocal version
            version += 1
            await world.endpoint("roll", version=version, **endpoint)
            await wait_applied(traffic_events, "roll", version)

        await world.deployment("roll", "green", [green.address])
        await step(traffic={"blue": 100, "green": 0})
        assert traffic.score("roll", KEY, deployment="green")[0] == 200
        await step(traffic={"blue": 100, "green": 0}, mirror={"green": 10})
        await step(traffic={"blue": 90, "green": 10})
        await step(traffic={"blue": 0, "green": 100})
        await world.delete_deployment("roll", "blue")
        await step(traffic={"green": 100})
        blue.close()  # the provisioner stops blue's instances once it is out of routing
        before = sum(statuses.values())
        eventually(lambda: sum(statuses.values()), lambda n: n > before + 50)
    finally:
        stop.set()
        worker.join()
    assert set(statuses) == {200}, statuses
    assert served["green"] > 0 and served["blue"] > 0


async def wait_applied(events: list[EventEnvelope], endpoint: str, version: int) -> None:
    async def applied() -> bool:
        return any(
            e.type == "sluice.traffic.applied" and e.data["endpoints"].get(endpoint) == version
            for e in events
        )

    await wait_for_async(applied, f"{endpoint} v{version} to be applied", 15)
