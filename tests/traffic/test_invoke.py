"""`sluice.sdk.invoke`: HTTPS through the gateway with the endpoint's own credentials."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

from sluice.common.platform import PlatformState
from sluice.common.resources import AuthMode, OnlineEndpointSpec
from sluice.sdk.client import RegistryClient
from sluice.sdk.invoke import invoke
from sluice.testing.traffic import Traffic, Upstream, World, eventually


def platform_state(traffic: Traffic) -> PlatformState:
    return PlatformState(
        started_at=datetime.now(UTC),
        state_dir=traffic.state_dir,
        nats_url="",
        mongodb_uri="",
        registry_address=None,
        envoy_http_port=traffic.http.port,
        envoy_https_port=traffic.https.port,
        domain=traffic.settings.domain,
        processes=[],
    )


async def test_invoke_with_key_and_token_over_verified_tls(
    traffic_with_registry: Traffic,
    client: RegistryClient,
    world: World,
    upstreams: Callable[[str], Upstream],
) -> None:
    traffic = traffic_with_registry
    state = platform_state(traffic)
    blue, green = upstreams("blue"), upstreams("green")
    for name, mode in (("inv-key", AuthMode.key), ("inv-token", AuthMode.aml_token)):
        client.create_online_endpoint(OnlineEndpointSpec(name=name, auth_mode=mode))
        await world.deployment(name, "blue", [blue.address])
        await world.deployment(name, "green", [green.address])
        client.set_traffic(name, {"blue": 100})

        def call(deployment: str | None, name: str = name) -> tuple[int, dict[str, str], bytes]:
            status, headers, body = invoke(
                name, b'{"data": [[1]]}', deployment, client=client, platform_state=state
            )
            return status, {k.lower(): v for k, v in headers}, body

        status, headers, body = eventually(lambda: call(None), lambda r: r[0] == 200)
        assert headers["azureml-model-deployment"] == "blue"
        assert json.loads(body)["body"] == '{"data": [[1]]}'
        status, headers, _ = call("green")
        assert (status, headers["azureml-model-deployment"]) == (200, "green")
