"""The safe rollout, end to end on the local platform, with a client sending all the while.

blue 100% -> create green (0%) -> pin reaches green -> mirror 10% to green
(clients only see blue; green counts the copies) -> 90/10 -> 0/100 -> delete
blue. Real registry, provisioner, traffic controller, Envoy and inference
servers; zero failed client requests is the assertion.
"""

from __future__ import annotations

import collections
import re
import threading
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sluice.common.platform import PlatformState
from sluice.common.resources import ProvisioningState
from sluice.common.settings import Settings
from sluice.sdk.client import RegistryClient, get_logs
from sluice.sdk.invoke import DEPLOYMENT_HEADER, GatewayTarget, send
from sluice.sdk.metrics import MetricsClient
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.testing.wait import wait_for

pytestmark = pytest.mark.integration
T = TypeVar("T")
ENDPOINT = "rollout-e2e"
BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
SENT = collections.Counter[str]()  # requests this test sent through Envoy (all of them)


def counted_send(*args: Any, **kwargs: Any) -> Any:
    SENT["requests"] += 1
    return send(*args, **kwargs)


class SteadyClient:
    """Scores the endpoint in a loop through Envoy and tallies who answered and any failure."""

    def __init__(self, state: PlatformState, key: str):
        self._target = GatewayTarget.of_platform(state)
        self._host = f"{ENDPOINT}.{state.domain}"
        self._headers = [("Authorization", f"Bearer {key}"), ("Content-Type", "application/json")]
        self.served: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                status, headers, body = counted_send(
                    self._target, host=self._host, path="/score", body=BODY, headers=self._headers
                )
            except OSError as exc:
                self.failures.append(f"connection: {exc}")
                continue
            self.total += 1
            if status != 200:
                self.failures.append(f"HTTP {status}: {body[:200]!r}")
                continue
            served = dict((k.lower(), v) for k, v in headers).get(DEPLOYMENT_HEADER, "?")
            self.served[served] += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def window(self, requests: int = 60) -> collections.Counter[str]:
        """Who served the next `requests` requests."""
        before = self.served.copy()
        target = self.total + requests
        wait_for(lambda: self.total >= target, f"{requests} more requests", deadline=60)
        return self.served - before


def green_requests(settings: Settings) -> int:
    """Requests green's instance received (its score.py logs one line per request)."""
    text = get_logs(ENDPOINT, "green", lines=100_000, settings=settings).text
    return len(re.findall("model 2: request received", text))


def test_safe_rollout_loses_no_request(
    local_platform: PlatformState, trained_examples: Path
) -> None:
    online = trained_examples / "online"
    settings = Settings(state_dir=local_platform.state_dir)
    with RegistryClient.connect(settings) as client:
        client.create_online_endpoint(
            load_online_endpoint(online / "endpoint.yml", name=ENDPOINT).spec
        )

        def deploy(name: str) -> None:
            spec = load_online_deployment(
                online / f"{name}-deployment.yml",
                client.upload,
                ["environment=null", "instance_count=2"],
                endpoint_name=ENDPOINT,
            ).spec
            client.create_online_deployment(spec)
            doc = wait_for(
                lambda: (
                    (d := client.get_online_deployment(ENDPOINT, name)).meta.provisioning_state
                    in (ProvisioningState.succeeded, ProvisioningState.failed)
                    and d
                ),
                f"{name} to settle",
                deadline=90,
            )
            assert doc.meta.provisioning_state is ProvisioningState.succeeded, (
                doc.meta.status_message
            )

        deploy("blue")
        client.set_traffic(ENDPOINT, {"blue": 100})
        key = client.get_credentials(ENDPOINT).primary_key
        steady = SteadyClient(local_platform, key)
        wait_for(
            lambda: (
                counted_send(
                    steady._target,
                    host=steady._host,
                    path="/score",
                    body=BODY,
                    headers=steady._headers,
                )[0]
                == 200
            ),
            "blue to be routed",
            deadline=90,
        )
        steady.start()
        try:
            assert set(steady.window()) == {"blue"}

            # Green at 0%: the pin header reaches it, the split does not.
            deploy("green")
            pinned = wait_for(
                lambda: (
                    (
                        r := counted_send(
                            steady._target,
                            host=steady._host,
                            path="/score",
                            body=BODY,
                            headers=[*steady._headers, (DEPLOYMENT_HEADER, "green")],
                        )
                    )[0]
                    == 200
                    and r
                ),
                "the pin to reach green",
                deadline=90,
            )
            assert dict((k.lower(), v) for k, v in pinned[1])[DEPLOYMENT_HEADER] == "green"
            assert set(steady.window()) == {"blue"}

            # Mirror 10% to green: clients still only see blue; green receives copies.
            before = green_requests(settings)
            client.set_traffic(ENDPOINT, {"green": 10}, mirror=True)
            wait_for(lambda: green_requests(settings) > before, "mirrored copies at green", 90)
            assert set(steady.window(100)) == {"blue"}
            client.set_traffic(ENDPOINT, {"green": 0}, mirror=True)

            # 90/10, then 0/100.
            client.set_traffic(ENDPOINT, {"blue": 90, "green": 10})
            wait_for(lambda: steady.window(40)["green"] > 0, "green to take live traffic", 90)
            client.set_traffic(ENDPOINT, {"blue": 0, "green": 100})
            wait_for(lambda: set(steady.window(40)) == {"green"}, "green to take everything", 90)

            # Delete blue while the client keeps going.
            client.delete_online_deployment(ENDPOINT, "blue")
            assert set(steady.window(100)) == {"green"}
        finally:
            steady.stop()
        client.delete_online_endpoint(ENDPOINT)

    assert steady.total > 300
    assert steady.failures == [], steady.failures[:5]

    # Every request sent through Envoy is in the metrics exactly once, within 5 s: each
    # under the deployment that served it, mirrored copies under green as copies only.
    with MetricsClient.connect(settings) as metrics:

        def counted() -> dict[str, list[int]] | None:
            rows: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
            for point in metrics.endpoint_metrics(ENDPOINT, since_s=3600).points:
                rows[point.deployment_name][0] += point.requests
                rows[point.deployment_name][1] += point.mirrored_requests
            return rows if rows[""][0] == SENT["requests"] else None

        rows = wait_for(counted, f"{SENT['requests']} requests in the endpoint's metrics", 5)
    served = sum(n - copies for name, (n, copies) in rows.items() if name)
    # Served by a deployment: at least every steady request (all 200s); the rest of the
    # total are Envoy's own answers to the probes (a pin before green was routed).
    assert steady.total <= served <= SENT["requests"], rows
    assert rows["blue"][1] == 0 and rows["green"][1] > 0, rows
