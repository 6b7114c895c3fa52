"""az commands that need no platform, run as scripts run them: through the `az` forwarder
`sluice shim az` writes, in a bash script under `set -euo pipefail`, with an empty state
folder (what needs a platform: tests/test_az_script.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sluice.common.azure_ids import SUBSCRIPTION

pytestmark = pytest.mark.integration  # CLI processes, no platform

Script = Callable[[str], subprocess.CompletedProcess[str]]


@pytest.fixture
def run_script(tmp_path: Path) -> Script:
    """Runs a script in `tmp_path` with the forwarder first on PATH."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
        "SLUICE_STATE_DIR": str(tmp_path / "state"),
        "NO_COLOR": "1",
    }
    shim = subprocess.run(
        [sys.executable, "-m", "sluice.sdk.cli", "shim", "az", "--dir", str(tmp_path / "bin")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert shim.returncode == 0, shim.stderr
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"

    def run(script: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "script.sh").write_text("set -euo pipefail\n" + script)
        bash = shutil.which("bash") or "/bin/bash"
        return subprocess.run(
            [bash, "script.sh"], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=300, check=False,
        )  # fmt: skip

    return run


def test_compute_commands_succeed_provision_nothing_and_say_so(
    run_script: Script, tmp_path: Path
) -> None:
    """Azure's batch scripts start with `az ml compute create -n batch-cluster ...`."""
    done = run_script(
        "az ml compute create -n batch-cluster --type amlcompute --min-instances 0 "
        "--max-instances 5 > created.json\n"
        'echo "state: $(az ml compute show -n batch-cluster --query provisioning_state -o tsv)"\n'
        "az ml compute update -n batch-cluster --max-instances 2 --query "
        "'{name: name, max: max_instances}' -o json\n"
        "az ml compute delete -n batch-cluster --yes\n"
        # deploy-mlcompute-create_with-system-identity.sh: the identity is echoed, none made.
        "az ml compute create -n id-cluster --size STANDARD_D3_V2 --identity-type "
        "system_assigned --query identity.type -o tsv > identity.txt\n"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    created = json.loads((tmp_path / "created.json").read_text())
    assert {k: created[k] for k in ("name", "type", "provisioning_state", "size")} == {
        "name": "batch-cluster",
        "type": "amlcompute",
        "provisioning_state": "Succeeded",
        "size": "STANDARD_DS3_V2",
    }
    assert (created["min_instances"], created["max_instances"]) == (0, 5)
    assert (tmp_path / "identity.txt").read_text().strip() == "system_assigned"
    assert created["id"].endswith("/computes/batch-cluster")
    assert "state: Succeeded\n" in done.stdout
    assert json.loads(done.stdout.split("state: Succeeded\n")[1]) == {
        "name": "batch-cluster",
        "max": 2,
    }
    said = " ".join(done.stderr.split())  # as wrapped at the terminal's width
    for verb, did in [("create", "created"), ("show", "is stored"), ("update", "changed"),
                      ("delete", "deleted")]:  # fmt: skip
        assert f"compute {verb} batch-cluster: nothing {did}" in said
    assert said.count("Sluice provisions no compute: online deployments run as") == 5


def test_az_version_and_config_get(run_script: Script) -> None:
    """`az --version` says what this az is; `az config get` answers as an az with nothing
    configured (cli/endpoints/online/custom-container/r reads the default workspace so)."""
    done = run_script(
        "az --version\n"
        'echo "config: $(az config get)"\n'
        'echo "defaults: $(az config get defaults)"\n'
        "WORKSPACE=$(az config get --query \"defaults[?name == 'workspace'].value\" -o tsv)\n"
        'echo "workspace: [$WORKSPACE]"\n'
        "if az config get defaults.workspace 2> unset.txt; then exit 1; fi\n"
        "az config set defaults.workspace=ws\n"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("sluice-sdk ") and "Sluice's forwarder" in done.stdout
    assert "config: {}" in lines and "defaults: []" in lines and "workspace: []" in lines
    said = " ".join(done.stderr.split())
    assert "az config set: nothing to do for Sluice" in said


def test_a_request_file_may_be_a_pipe(run_script: Script, tmp_path: Path) -> None:
    """`invoke --request-file <(...)` (bash's /dev/fd/63) is read as a stream; a missing
    file is still named. (Scored through a pipe: tests/test_cli_local.py.)"""
    done = run_script(
        "if az ml online-endpoint invoke --local -n nowhere -r <(echo '{\"data\": [1]}') "
        "2> piped.txt; then exit 1; fi\n"
        "if az ml online-endpoint invoke --local -n nowhere -r missing.json 2> missing.txt; "
        "then exit 1; fi\n"
        "if az ml online-endpoint invoke --local -n nowhere -r . 2> folder.txt; then exit 1; fi\n"
    )
    assert done.returncode == 0, done.stdout + done.stderr

    def said(name: str) -> str:
        return " ".join((tmp_path / name).read_text().split())

    assert said("piped.txt").startswith("error: no local deployment")  # read, then no server
    assert said("missing.txt") == "error: missing.json: no such file"
    assert (
        said("folder.txt") == "error: . is a folder; --request-file takes the request body's file"
    )


def test_az_account_get_access_token_gives_the_sluice_token(
    run_script: Script, tmp_path: Path
) -> None:
    """azureml-examples' batch REST calls take `az account get-access-token --resource
    https://ml.azure.com --query accessToken -o tsv`: with SLUICE_TOKEN set, the user's own
    token (without it, a deployer token made for the script: tests/test_tokens.py). For any
    other audience (the default is Azure Resource Manager, whose scripts call
    management.azure.com) it is refused: Sluice's token must not be sent to Azure."""
    get = "az account get-access-token --resource https://ml.azure.com"
    done = run_script(
        f"export SLUICE_TOKEN=alices-token\nGET='{get}'\n"
        'echo "user: [$($GET --query accessToken -o tsv)]"\n'
        "$GET > whole.json\n"
        'echo "scope: [$(az account get-access-token --scope https://ml.azure.com/.default '
        '--query accessToken -o tsv)]"\n'
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "user: [alices-token]" in done.stdout and "scope: [alices-token]" in done.stdout
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert whole["tokenType"] == "Bearer" and whole["accessToken"] == "alices-token"
    for other in ("", " --resource https://management.azure.com"):
        refused = run_script(
            f"SLUICE_TOKEN=alices-token az account get-access-token{other} "
            "--query accessToken -o tsv\n"
        )
        assert refused.returncode != 0 and refused.stdout == "", refused.stdout
        said = " ".join(refused.stderr.split())
        assert "gives a token only for --resource https://ml.azure.com" in said
    # The subscription scripts put into Azure's long data URIs: the one Sluice's ids carry.
    shown = run_script("az account show --query id -o tsv\n")
    assert shown.stdout.strip() == SUBSCRIPTION, shown.stderr
