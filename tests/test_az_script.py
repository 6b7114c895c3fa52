"""A shell script written for `az ml` runs against Sluice through `sluice shim az` (issue 14)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.common.platform import PlatformState

pytestmark = pytest.mark.integration

# As Azure's samples write it (cli/deploy-managed-online-endpoint.sh), plus the
# az set-up lines such scripts start with. Nothing in it is Sluice-specific.
SCRIPT = r"""#!/bin/bash
set -euo pipefail
az extension add -n ml -y
az account set --subscription 00000000-0000-0000-0000-000000000000
ENDPOINT_NAME=az-script
az ml online-endpoint create --name $ENDPOINT_NAME -f endpoint.yml -g my-rg -w my-ws
az ml online-deployment create --name blue --endpoint $ENDPOINT_NAME -f blue-deployment.yml \
  --set environment=null --all-traffic
STATE=$(az ml online-endpoint show -n $ENDPOINT_NAME --query "provisioning_state" -o tsv)
echo "state: $STATE"
ENDPOINT_KEY=$(az ml online-endpoint get-credentials -n $ENDPOINT_NAME -o tsv --query primaryKey)
SCORING_URI=$(az ml online-endpoint show -n $ENDPOINT_NAME -o tsv --query scoring_uri)
echo "scoring uri: $SCORING_URI"
curl --fail --silent --request POST "$SCORING_URI" \
  --header "Authorization: Bearer $ENDPOINT_KEY" --header 'Content-Type: application/json' \
  --data @sample-request.json
echo
az ml online-deployment create --name green --endpoint $ENDPOINT_NAME -f green-deployment.yml \
  --set environment=null
az ml online-endpoint update --name $ENDPOINT_NAME --traffic "blue=90 green=10"
echo "traffic: $(az ml online-endpoint show -n $ENDPOINT_NAME --query 'traffic.green' -o tsv)"
DEPLOYMENT_ID=$(az ml online-deployment show -n green -e $ENDPOINT_NAME --query id -o tsv)
echo "deployment id: $DEPLOYMENT_ID"
az monitor autoscale create --name az-script-scale --resource "$DEPLOYMENT_ID" -g my-rg \
  --min-count 1 --max-count 2 --count 1 -o none
az monitor autoscale rule create --autoscale-name az-script-scale -g my-rg \
  --condition "RequestsPerMinute > 100000 avg 5m" --scale out 1 -o none
echo "autoscale: $(az monitor autoscale show -n az-script-scale --query targetResourceUri -o tsv)"
az monitor autoscale delete -n az-script-scale -g my-rg
az ml online-endpoint show -n $ENDPOINT_NAME --query '{name:name, auth:auth_mode}' -o json
az ml online-endpoint delete --name $ENDPOINT_NAME --yes --no-wait
if az ml workspace show -n my-ws 2> unsupported.txt; then exit 1; fi
"""


@pytest.mark.timeout(900)  # two deployments and a dozen CLI processes on a busy machine
def test_an_az_ml_script_runs_through_the_forwarder(
    local_platform: PlatformState, trained_examples: Path, tmp_path: Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
        "SLUICE_STATE_DIR": str(local_platform.state_dir),
        "CURL_CA_BUNDLE": str(local_platform.state_dir / "tls/ca.crt"),  # the gateway's local CA
        "NO_COLOR": "1",
    }
    shim = subprocess.run(
        [sys.executable, "-m", "sluice.sdk.cli", "shim", "az", "--dir", str(tmp_path / "bin")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert shim.returncode == 0, shim.stderr
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    online = trained_examples / "online"
    (online / "deploy.sh").write_text(SCRIPT)
    bash = shutil.which("bash") or "/bin/bash"
    result = subprocess.run(
        [bash, "deploy.sh"], cwd=online, env=env, capture_output=True, text=True, timeout=850,
        check=False,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "state: Succeeded" in out
    https_port = local_platform.envoy_https_port
    assert f"scoring uri: https://localhost:{https_port}/endpoints/az-script/score" in out
    assert "traffic: 10" in out
    assert "/onlineEndpoints/az-script/deployments/green\n" in out
    assert "autoscale: /subscriptions/" in out  # az monitor autoscale, forwarded
    assert out.split("autoscale: ")[1].splitlines()[0].endswith("/az-script/deployments/green")
    assert '"name": "az-script",\n  "auth": "key"' in out
    scored = out.split("scoring uri: ")[1].splitlines()[1]
    assert scored.startswith("[") and scored.count(",") == 1  # two predictions
    assert (
        "`az ml workspace` is not supported by Sluice" in (online / "unsupported.txt").read_text()
    )
