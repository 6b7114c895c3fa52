"""The platform under attack: one endpoint with an attacker's and a victim's deployment.

Everything is real (`sluice up`'s platform on free ports, Envoy, the
provisioner's instances); each test tries one attack and asserts it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sluice.common.nats_auth import CLI_USER
from sluice.common.platform import PlatformState
from sluice.common.resources import OnlineDeploymentDoc, ProvisioningState
from sluice.common.settings import Settings
from sluice.sdk.client import RegistryClient
from sluice.sdk.invoke import GatewayTarget, credential
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.testing.wait import wait_for

HERE = Path(__file__).parent
ENDPOINT = "sec-e2e"
VICTIM_SECRET = "victim-env-secret-7d1e"


@dataclass(frozen=True)
class Attacked:
    state: PlatformState
    client: RegistryClient
    key: str
    attacker: OnlineDeploymentDoc
    victim: OnlineDeploymentDoc

    @property
    def target(self) -> GatewayTarget:
        return GatewayTarget.of_platform(self.state)

    @property
    def host(self) -> str:
        return f"{ENDPOINT}.{self.state.domain}"


def _deploy(
    client: RegistryClient, folder: Path, name: str, env: dict[str, str], traffic: bool
) -> OnlineDeploymentDoc:
    spec_file = folder / f"{name}.yml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "endpoint_name": ENDPOINT,
                "model": {"path": str(HERE / "victim" / "secret.txt")},
                "code_configuration": {"code": str(HERE / name), "scoring_script": "score.py"},
                "instance_type": "Standard_DS1_v2",
                "instance_count": 1,
                "environment_variables": env,
            }
        )
    )
    spec = load_online_deployment(spec_file, client.upload).spec
    client.create_online_deployment(spec)
    doc = wait_for(
        lambda: (
            (d := client.get_online_deployment(ENDPOINT, name)).meta.provisioning_state
            in (ProvisioningState.succeeded, ProvisioningState.failed)
            and d
        ),
        f"{name} to settle",
        deadline=180,
    )
    assert doc.meta.provisioning_state is ProvisioningState.succeeded, doc.meta.status_message
    if traffic:
        client.set_traffic(ENDPOINT, {name: 100})
    return doc


@pytest.fixture(scope="session")
def attacked(
    local_platform: PlatformState, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Attacked]:
    folder = tmp_path_factory.mktemp("security")
    state_dir = local_platform.state_dir
    with RegistryClient.connect(Settings(state_dir=state_dir)) as client:
        endpoint_file = folder / "endpoint.yml"
        endpoint_file.write_text(yaml.safe_dump({"name": ENDPOINT, "auth_mode": "key"}))
        client.create_online_endpoint(load_online_endpoint(endpoint_file).spec)
        victim = _deploy(client, folder, "victim", {"VICTIM_SECRET": VICTIM_SECRET}, False)
        attacker = _deploy(
            client,
            folder,
            "attacker",
            {
                "PROBE_STATE_DIR": str(state_dir),
                "PROBE_VICTIM_WORKSPACE": str(state_dir / "workspaces" / ENDPOINT / "victim"),
            },
            True,
        )
        yield Attacked(local_platform, client, credential(client, ENDPOINT), attacker, victim)


def refused_to_services(state: PlatformState) -> list[str]:
    """nats-server's log lines where it refused a service (or the CLI) a subject."""
    log = next(p.log_path for p in state.processes if p.name == "nats").read_text()
    services = {"registry", "traffic", "provisioner", "batch", "metrics", CLI_USER}
    return [
        line
        for line in log.splitlines()
        if "Violation" in line and any(f'user:{s}"' in line for s in services)
    ]
