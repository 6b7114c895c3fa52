"""Azure's gateway status codes, mirroring and retries, through the real gateway."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sluice.common.headers import MODEL_STATUS_HEADER
from sluice.common.supervisor import free_port
from sluice.testing.traffic import (
    Behaviour,
    Traffic,
    Upstream,
    World,
    eventually,
    healthy_hosts,
)

KEY = "primary-key-1"


async def test_model_errors_timeouts_overload_and_no_instance(
    traffic: Traffic, world: World, upstreams: Callable[[str], Upstream]
) -> None:
    failing, slow, busy = upstreams("failing"), upstreams("slow"), upstreams("busy")
    unready, chose = upstreams("unready"), upstreams("chose")
    failing.behaviour = Behaviour(status=500)
    # The inference server's own 503 passes as it is; a 503 that run() chose is marked.
    unready.behaviour = Behaviour(status=503)
    chose.behaviour = Behaviour(status=503, headers=((MODEL_STATUS_HEADER, "true"),))
    slow.behaviour = Behaviour(delay_s=1.0)
    busy.behaviour = Behaviour(delay_s=0.5)
    await world.deployment("codes", "failing", [failing.address])
    await world.deployment("codes", "slow", [slow.address], timeout_ms=200)
    await world.deployment("codes", "busy", [busy.address], concurrency=1)
    await world.deployment("codes", "empty", [])
    await world.deployment("codes", "unready", [unready.address])
    await world.deployment("codes", "chose", [chose.address])
    await world.endpoint("codes", traffic={"failing": 100})
    eventually(lambda: traffic.score("codes", KEY, deployment="empty")[0], lambda s: s == 503)
    # Envoy routes to a new instance once its first active health check answered; on a
    # loaded machine that can come after the routes. Wait for that, not for a fixed time.
    for name in ("failing", "slow", "busy", "unready", "chose"):
        eventually(lambda name=name: healthy_hosts(traffic, "codes", name), bool)

    # A model's non-2xx becomes 424 with its status and reason in headers; the body is kept.
    status, headers, body = traffic.score("codes", KEY)
    assert status == 424, (status, body)
    assert headers["ms-azureml-model-error-statuscode"] == "500"
    assert headers["ms-azureml-model-error-reason"] == "Internal Server Error"
    assert json.loads(body)["deployment"] == "failing"

    status, headers, body = traffic.score("codes", KEY, deployment="unready")
    assert status == 503 and "ms-azureml-model-error-statuscode" not in headers, (status, body)
    status, headers, body = traffic.score("codes", KEY, deployment="chose")
    assert status == 424, (status, body)
    assert headers["ms-azureml-model-error-statuscode"] == "503"
    assert headers["ms-azureml-model-error-reason"] == "Service Unavailable"
    assert MODEL_STATUS_HEADER not in headers  # the mark is the gateway's to read, not the client's
    assert json.loads(body)["deployment"] == "chose"

    status, _, body = traffic.score("codes", KEY, deployment="slow")
    assert status == 408 and "request_timeout_ms" in json.loads(body)["message"]

    status, _, body = traffic.score("codes", KEY, deployment="empty")
    assert status == 503 and "ready instance" in json.loads(body)["message"]

    # 1 instance x concurrency 1: more than 2 in flight fail fast with 429.
    with ThreadPoolExecutor(6) as pool:
        statuses = list(
            pool.map(lambda _: traffic.score("codes", KEY, deployment="busy")[0], range(6))
        )
    assert statuses.count(429) >= 1 and statuses.count(200) >= 2, statuses
    assert set(statuses) <= {200, 429}


async def test_connect_failures_are_retried_on_another_instance(
    traffic: Traffic, world: World, upstreams: Callable[[str], Upstream]
) -> None:
    live = upstreams("blue")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    await world.deployment("retry", "blue", [dead, live.address])
    await world.endpoint("retry", traffic={"blue": 100})
    eventually(lambda: traffic.score("retry", KEY)[0], lambda s: s == 200)
    assert [traffic.score("retry", KEY)[0] for _ in range(30)] == [200] * 30


async def test_a_request_that_crashes_every_instance_gets_502(
    traffic: Traffic, world: World, upstreams: Callable[[str], Upstream]
) -> None:
    first, second = upstreams("crash-1"), upstreams("crash-2")
    await world.deployment("crash", "blue", [first.address, second.address])
    await world.endpoint("crash", traffic={"blue": 100})
    eventually(lambda: traffic.score("crash", KEY)[0], lambda s: s == 200)
    first.behaviour = second.behaviour = Behaviour(crash=True)

    status, _, body = traffic.score("crash", KEY)
    assert status == 502, (status, body)
    assert "crashed or closed the connection" in json.loads(body)["message"]

    # One instance crashing on a request (the other answers): the client never sees it.
    first.behaviour = Behaviour()
    assert [traffic.score("crash", KEY)[0] for _ in range(10)] == [200] * 10


async def test_mirror_copies_a_share_of_unpinned_requests(
    traffic: Traffic, world: World, upstreams: Callable[[str], Upstream]
) -> None:
    blue, green = upstreams("blue"), upstreams("green")
    await world.deployment("mirrored", "blue", [blue.address])
    await world.deployment("mirrored", "green", [green.address])
    await world.endpoint("mirrored", traffic={"blue": 100}, mirror={"green": 50})
    eventually(lambda: traffic.score("mirrored", KEY)[0], lambda s: s == 200)

    for _ in range(50):  # pinned requests are never mirrored
        assert traffic.score("mirrored", KEY, deployment="blue", body=b"pinned")[0] == 200
    served = {
        traffic.score("mirrored", KEY, body=b"live")[1]["azureml-model-deployment"]
        for _ in range(400)
    }
    assert served == {"blue"}  # clients only ever get the live answer
    mirrored = eventually(lambda: green.bodies.count(b"live"), lambda n: n >= 140)
    assert mirrored <= 260, mirrored  # about half of 400
    assert b"pinned" not in green.bodies
