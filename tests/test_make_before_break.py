"""Make before break: changes to a serving deployment fail no request, through the real Envoy.

A steady client (four keep-alive connections through Envoy) scores the
endpoint while the deployment is rolled with one instance (a changed
environment variable restarts every instance), scaled out to two, rolled
with two, and scaled in to one. Each old instance leaves routing (the
gateway's `traffic.applied`) before it is stopped, and a new one serves
before an old one leaves, so zero failed requests is the assertion, per phase.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from sluice.common.platform import PlatformState
from sluice.common.resources import OnlineDeploymentDoc, ProvisioningState
from sluice.common.settings import Settings
from sluice.sdk.client import RegistryClient
from sluice.sdk.invoke import GatewayTarget, send
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.testing.load import SteadyLoad
from sluice.testing.wait import wait_for

pytestmark = pytest.mark.integration
ENDPOINT = "mbb-e2e"
BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'


@pytest.mark.timeout(400)  # four changes under load, on a shared 2-core machine
def test_rolls_and_scale_in_fail_no_request(
    local_platform: PlatformState, trained_examples: Path
) -> None:
    online = trained_examples / "online"
    settings = Settings(state_dir=local_platform.state_dir)
    assert local_platform.envoy_http_port, "the test platform serves plain HTTP"
    with RegistryClient.connect(settings) as client:
        client.create_online_endpoint(
            load_online_endpoint(online / "endpoint.yml", name=ENDPOINT).spec
        )
        spec = load_online_deployment(
            online / "blue-deployment.yml",
            client.upload,
            # Four concurrent clients stay within Azure's in-flight limit (2 x concurrency per
            # instance): a 429 here would be correct overload, not a lost request.
            [
                "environment=null",
                "instance_count=1",
                "request_settings.max_concurrent_requests_per_instance=4",
            ],
            endpoint_name=ENDPOINT,
        ).spec
        client.create_online_deployment(spec)

        def settled(version: int, count: int, not_ids: set[str]) -> OnlineDeploymentDoc | None:
            doc = client.get_online_deployment(ENDPOINT, "blue")
            assert doc.meta.provisioning_state is not ProvisioningState.failed, (
                doc.meta.status_message
            )
            ids = {i.id for i in doc.instances}
            done = (
                doc.meta.version >= version
                and doc.meta.provisioning_state is ProvisioningState.succeeded
                and len(doc.instances) == count
                and all(i.ready for i in doc.instances)
                and not ids & not_ids
            )
            return doc if done else None

        doc = wait_for(lambda: settled(1, 1, set()), "blue to serve", deadline=90)
        client.set_traffic(ENDPOINT, {"blue": 100})
        key = client.get_credentials(ENDPOINT).primary_key
        target = GatewayTarget.of_platform(local_platform)
        host = f"{ENDPOINT}.{local_platform.domain}"
        headers = [("Authorization", f"Bearer {key}"), ("Content-Type", "application/json")]
        wait_for(
            lambda: send(target, host=host, path="/score", body=BODY, headers=headers)[0] == 200,
            "blue to be routed",
            deadline=90,
        )

        failed: dict[str, list[str]] = {}
        with SteadyLoad(local_platform.envoy_http_port, host, key, BODY) as load:
            load.wait_requests(100)

            def change(phase: str, count: int, roll: bool, **update: object) -> None:
                nonlocal doc
                before, started = len(load.failures()), time.monotonic()
                old_ids = {i.id for i in doc.instances} if roll else set()
                updated = client.update_online_deployment(doc.spec.model_copy(update=update))
                doc = wait_for(
                    lambda: settled(updated.meta.version, count, old_ids),
                    f"{phase} to finish",
                    deadline=90,
                )
                print(f"{phase}: {time.monotonic() - started:.1f}s")
                load.wait_requests(200)
                failed[phase] = load.failures()[before:]

            env = dict(doc.spec.environment_variables)
            change("roll, 1 instance", 1, True, environment_variables={**env, "ROLL": "1"})
            change("scale out 1->2", 2, False, instance_count=2)
            change("roll, 2 instances", 2, True, environment_variables={**env, "ROLL": "2"})
            change("scale in 2->1", 1, False, instance_count=1)
            total = load.total
        client.delete_online_endpoint(ENDPOINT)

    summary = {
        phase: Counter(f.split(" ", 1)[1][:70] for f in failures)
        for phase, failures in failed.items()
    }
    assert total > 1000, total
    assert all(not f for f in failed.values()), summary
