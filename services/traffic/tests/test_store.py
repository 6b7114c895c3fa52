"""What the traffic controller reads from the provisioner's instance lists."""

from __future__ import annotations

from cryptography.fernet import Fernet
from pymongo import AsyncMongoClient

from sluice.common.resources import (
    Instance,
    Meta,
    OnlineDeploymentDoc,
    OnlineDeploymentSpec,
    RequestSettings,
)
from sluice.common.secretbox import SecretBox
from sluice.traffic.store import TrafficStore

DOC = OnlineDeploymentDoc(
    spec=OnlineDeploymentSpec(
        name="blue", endpoint_name="ep", request_settings=RequestSettings(request_timeout_ms=5000)
    ),
    meta=Meta(),
)


async def test_requests_held_by_the_activator_may_wait_for_the_wake_up() -> None:
    """At zero the activator is the only instance: the gateway gives a request its wake-up
    deadline on top of request_timeout_ms (a cold start is not the model being slow); once
    a real instance is listed, request_timeout_ms alone again."""
    unused = AsyncMongoClient("mongodb://127.0.0.1:1", connect=False)["sluice"]  # never called
    store = TrafficStore(unused, SecretBox(Fernet.generate_key().decode()))
    activator = Instance(id="blue-activator", address="127.0.0.1:7001", ready=True,
                         holds_requests_s=60)  # fmt: skip
    instance = Instance(id="blue-1", address="127.0.0.1:7002", ready=True)
    at_zero = await store._deployment(DOC, [activator])
    awake = await store._deployment(DOC, [instance])
    assert at_zero.request_timeout_ms == 65_000
    assert awake.request_timeout_ms == 5_000
    assert [u.port for u in at_zero.instances] == [7001]
