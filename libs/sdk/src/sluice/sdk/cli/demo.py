"""`sluice demo`: the bundled example endpoint, live, in one command (what `make up` runs).

Trains the example models (scikit-learn's diabetes data, no download),
creates `my-endpoint` with `blue` and `green` from the Azure-format YAML in
examples/online at 90/10, scores one request through Envoy and prints what
to try next. Run again (every `make up` does), it changes nothing the user
may have changed: once the demo has been deployed (a marker in the state folder
says so), `my-endpoint`'s deployments and traffic are left as they are, even a
deployment the user deleted. A first run that stopped half-way (an environment
that did not build, Ctrl-C during the first build) is finished by the next one:
the deployments missing are created and an empty split is set.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from pathlib import Path

from rich.markup import escape

from sluice.common.components import find_project_file
from sluice.common.platform import LocalPlatform, PlatformState
from sluice.common.resources import ProvisioningState
from sluice.common.settings import Settings
from sluice.sdk.cli.common import registry, wait_for_deployment
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import console, err_console
from sluice.sdk.client import OnlineEndpoint, RegistryClient, SluiceError
from sluice.sdk.invoke import DEPLOYMENT_HEADER, invoke
from sluice.sdk.specs import load_online_deployment, load_online_endpoint

ENDPOINT = "my-endpoint"
SPLIT = {"blue": 90, "green": 10}
SERVE_TIMEOUT_S = 60.0
DEPLOYED_MARKER = "demo-deployed"  # in the state folder, once the demo is deployed


def _examples() -> Path:
    return find_project_file(Path("examples/online/endpoint.yml")).parent


def _train(examples: Path) -> None:
    if (examples / "model-1/model/sklearn_regression_model.pkl").exists():
        return
    with err_console.status("Training the example models (scikit-learn diabetes data)…"):
        subprocess.run(
            [sys.executable, str(examples.parent / "train_models.py")],
            check=True,
            capture_output=True,
        )


def _ensure_deployments(client: RegistryClient, examples: Path, deployed: Path) -> bool:
    """Create the demo endpoint, its deployments and split, then the `deployed` marker;
    False when the demo was deployed before (kept as it is)."""
    try:
        endpoint: OnlineEndpoint | None = client.get_online_endpoint(ENDPOINT)
    except SluiceError as exc:
        if exc.code != "NOT_FOUND":
            raise
        endpoint = None
    if endpoint is not None and deployed.exists():
        split = " ".join(f"{k}={v}" for k, v in sorted(endpoint.doc.spec.traffic.items()))
        err_console.print(
            f"  [green]✓[/] endpoint {ENDPOINT} exists: kept as it is (traffic {split or 'none'})"
        )
        return False
    if endpoint is None:
        client.create_online_endpoint(load_online_endpoint(examples / "endpoint.yml").spec)
        err_console.print(f"  [green]✓[/] endpoint {ENDPOINT}")
    else:
        err_console.print(f"  [green]✓[/] endpoint {ENDPOINT} exists (the demo did not finish)")
    existing = {d.spec.name: d for d in client.list_online_deployments(ENDPOINT)}
    for name in SPLIT:
        found = existing.get(name)
        if found is None or found.meta.provisioning_state is ProvisioningState.failed:
            spec = load_online_deployment(examples / f"{name}-deployment.yml", client.upload).spec
            if found is None:
                client.create_online_deployment(spec)
            else:  # it failed in the run that did not finish: once more
                client.update_online_deployment(spec)
        doc = wait_for_deployment(
            functools.partial(client.get_online_deployment, ENDPOINT, name),
            what=f"deployment {name} (first time: builds its environment)",
        )
        if doc.meta.provisioning_state is not ProvisioningState.succeeded:
            raise CliError(f"deployment {name} is {doc.meta.provisioning_state.value}: "
                           f"{doc.meta.status_message}")  # fmt: skip
        err_console.print(f"  [green]✓[/] deployment {name}: Succeeded")
    if endpoint is None or not any(endpoint.doc.spec.traffic.values()):
        client.set_traffic(ENDPOINT, SPLIT)
        err_console.print(f"  [green]✓[/] traffic blue={SPLIT['blue']} green={SPLIT['green']}")
    deployed.write_text(f"{ENDPOINT}\n")
    return True


def _first_answer(client: RegistryClient, state: PlatformState, body: bytes) -> tuple[str, str]:
    """Score through Envoy until the new routes are live (deadline SERVE_TIMEOUT_S)."""
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    last = ""
    with err_console.status("Waiting for the gateway to route the endpoint…"):
        while time.monotonic() < deadline:
            status, headers, reply = invoke(
                ENDPOINT, body, None, client=client, platform_state=state
            )
            if status == 200:
                served = {k.lower(): v for k, v in headers}.get(DEPLOYMENT_HEADER, "?")
                return reply.decode(), served
            last = f"HTTP {status}: {reply.decode(errors='replace')[:200]}"
            time.sleep(0.2)
    raise CliError(f"the gateway did not serve {ENDPOINT} within {SERVE_TIMEOUT_S:.0f}s ({last})")


def demo() -> None:
    """Deploy the bundled example (blue/green at 90/10) and score it through the gateway."""
    settings = Settings()
    state = LocalPlatform(settings).load_state()
    if state is None:
        raise CliError("the platform is not running: start it with `sluice up` (or `make up`)")
    examples = _examples()
    _train(examples)
    request = examples / "sample-request.json"
    with registry() as client:
        _ensure_deployments(client, examples, state.state_dir / DEPLOYED_MARKER)
        endpoint = client.get_online_endpoint(ENDPOINT)
        uri = endpoint.scoring_uri
        if not any(endpoint.doc.spec.traffic.values()):
            console.print(f"\n{ENDPOINT} takes no traffic (its split is yours to set): not scored.")
            return
        answer, served = _first_answer(client, state, request.read_bytes())
    ca = state.state_dir / "tls" / "ca.crt"
    rel = Path(request).resolve()
    console.print(
        f"\n[bold]{ENDPOINT}[/] answered through Envoy (served by {served}): {escape(answer)}\n"
    )
    console.print(
        "(The commands below run in this checkout's environment: `source .venv/bin/activate`, "
        "or prefix them with `uv run`.)",
        highlight=False,
    )
    console.print(f"Scoring URI:   {uri}")
    console.print(f"Get the key:   sluice online-endpoint get-credentials -n {ENDPOINT}")
    console.print(
        f"Score it:      sluice online-endpoint invoke -n {ENDPOINT} --request-file {rel}"
    )
    console.print(
        "With curl:     KEY=$(sluice online-endpoint get-credentials -n my-endpoint -o json "
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"primaryKey\"])')\n"
        f'               curl --cacert {ca} -H "Authorization: Bearer $KEY" '
        f"-H 'Content-Type: application/json' -d @{rel} {uri}\n"
        "               (after `sluice tls trust`, curl and Python need no --cacert)",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"Pin green:     sluice online-endpoint invoke -n {ENDPOINT} --deployment-name green "
        f"--request-file {rel}\nShift traffic: sluice online-endpoint update -n {ENDPOINT} "
        "--traffic 'blue=0 green=100'\nStop:          sluice down (or make down)",
        soft_wrap=True,
        highlight=False,
    )
