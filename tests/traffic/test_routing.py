"""Routing through a real Envoy configured by a real traffic controller process."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

from sluice.traffic.testing import Traffic, Upstream, World, eventually

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
