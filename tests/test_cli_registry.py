"""The `sluice` CLI against a real registry: Azure YAML files in, one clear line out on errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sluice.common.platform import PlatformState
from sluice.testing.cli import Cli as InProcessCli
from sluice.testing.plugin import RunningService

pytestmark = pytest.mark.integration


class Cli:
    """`sluice ...` pointed at this test's registry, in the test's process
    (sluice.testing.cli)."""

    def __init__(self, runner: InProcessCli, env: dict[str, str | None], cwd: Path):
        self._runner = runner
        self._env = env
        self._cwd = cwd

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = self._runner.complete(*args, env=self._env, cwd=self._cwd)
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "-o", "json").stdout)

    def error(self, *args: str) -> str:
        """Run a command that must fail: exit 1, one line on stderr, no traceback."""
        result = self(*args, ok=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, result.stderr
        return lines[0]


@pytest.fixture
def in_process(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> InProcessCli:
    return InProcessCli(capsys, monkeypatch)


@pytest.fixture
def cli(registry: RunningService, examples: Path, in_process: InProcessCli) -> Cli:
    env: dict[str, str | None] = {
        "SLUICE_REGISTRY_ADDRESS": registry.address,
        "SLUICE_ADMIN_TOKEN": registry.settings.admin_token or "",
        "SLUICE_STATE_DIR": str(registry.settings.state_dir),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    return Cli(in_process, env, examples / "online")


def test_create_show_list_and_traffic(cli: Cli) -> None:
    cli("online-endpoint", "create", "-f", "endpoint.yml")
    created = cli("online-deployment", "create", "-f", "blue-deployment.yml", "--no-wait")
    assert "blue" in created.stdout and "Creating" in created.stdout
    assert "it is Creating (--no-wait)" in created.stderr
    shown = cli.json("online-deployment", "show", "-n", "blue", "-e", "my-endpoint")
    assert isinstance(shown, dict) and shown["provisioning_state"] == "Creating"
    assert shown["scale_settings"] == {"type": "default"}  # as Azure shows it
    cli("online-deployment", "create", "-f", "green-deployment.yml", "--no-wait")
    cli("online-endpoint", "update", "-n", "my-endpoint", "--set", "traffic.blue=100")
    endpoint = cli.json(
        "online-endpoint", "update", "-n", "my-endpoint", "--traffic", "blue=90 green=10"
    )
    assert isinstance(endpoint, dict) and endpoint["traffic"] == {"blue": 90, "green": 10}
    # Re-applying the YAML (no traffic in it) keeps the split.
    again = cli.json("online-endpoint", "update", "-f", "endpoint.yml")
    assert isinstance(again, dict) and again["traffic"] == {"blue": 90, "green": 10}
    table = cli("online-endpoint", "list").stdout
    assert "my-endpoint" in table and "blue=90 green=10" in table
    listed = cli.json("online-deployment", "list", "-e", "my-endpoint")
    assert isinstance(listed, list) and [d["name"] for d in listed] == ["blue", "green"]
    as_yaml = yaml.safe_load(
        cli("online-endpoint", "show", "-n", "my-endpoint", "-o", "yaml").stdout
    )
    assert as_yaml["scoring_uri"].endswith("/score")
    keys = cli.json("online-endpoint", "get-credentials", "-n", "my-endpoint")
    assert isinstance(keys, dict) and keys["primaryKey"] != keys["secondaryKey"]


def test_all_traffic_goes_only_to_a_deployment_that_succeeded(cli: Cli) -> None:
    cli("online-endpoint", "create", "-f", "endpoint.yml")
    cli("online-deployment", "create", "-f", "blue-deployment.yml", "--no-wait")
    cli("online-endpoint", "update", "-n", "my-endpoint", "--traffic", "blue=100")
    green = ("online-deployment", "create", "-f", "green-deployment.yml", "--all-traffic")
    assert "cannot be used with --no-wait" in cli.error(*green, "--no-wait")
    listed = cli.json("online-deployment", "list", "-e", "my-endpoint")
    assert isinstance(listed, list) and [d["name"] for d in listed] == ["blue"]
    # No provisioner runs here: green is stored, Creating, and gets no traffic.
    assert "traffic of my-endpoint was not moved: green is Creating" in cli.error(*green)
    endpoint = cli.json("online-endpoint", "show", "-n", "my-endpoint")
    assert isinstance(endpoint, dict) and endpoint["traffic"] == {"blue": 100}


def test_generic_update_arguments_as_az(cli: Cli) -> None:
    """`--set/--add/--remove` on update commands, by name, as Azure's scripts write them."""
    cli("online-endpoint", "create", "-f", "endpoint.yml")
    cli("online-deployment", "create", "-f", "blue-deployment.yml", "--no-wait")
    ep = cli.json(
        "ml", "online-endpoint", "update", "-n", "my-endpoint", "--add", "tags", "team=ml",
        "env=dev", "--set", "description=scored", "traffic.blue=100",
    )  # fmt: skip
    assert isinstance(ep, dict)
    assert ep["tags"] == {"team": "ml", "env": "dev"} and ep["description"] == "scored"
    assert ep["traffic"] == {"blue": 100}
    ep = cli.json("online-endpoint", "update", "-n", "my-endpoint", "--remove", "tags.env")
    assert isinstance(ep, dict) and ep["tags"] == {"team": "ml"}
    # A deployment by name, no file (Azure's safe-rollout docs scale this way).
    dep = cli.json(
        "az", "ml", "online-deployment", "update", "--name", "blue", "--endpoint", "my-endpoint",
        "--set", "instance_count=2", "request_settings.max_queue_wait_ms=250", "--add",
        "environment_variables", "MODE=fast", "--no-wait",
    )  # fmt: skip
    assert isinstance(dep, dict) and dep["instance_count"] == 2
    assert dep["request_settings"]["max_queue_wait_ms"] == 250
    assert dep["environment_variables"]["MODE"] == "fast"
    assert dep["model"] and dep["code_configuration"]["code"]  # kept as stored
    before = cli.json("online-deployment", "show", "-n", "blue", "-e", "my-endpoint")
    for args, message in [
        (["--remove", "tags.nope"], "--remove tags.nope: no field 'nope'"),
        (["--set", "instance_count=many"], "instance_count: Input should be a valid integer"),
        (["--set", "model=./model"], "model of deployment blue can only be changed with"),
        (["--add", "instance_count", "3"], "instance_count is the value 2, not a list"),
    ]:
        line = cli.error("online-deployment", "update", "-n", "blue", "-e", "my-endpoint", *args)
        assert message in line, line
    assert cli.json("online-deployment", "show", "-n", "blue", "-e", "my-endpoint") == before


def test_an_update_by_name_runs_another_script_of_the_stored_code(cli: Cli, examples: Path) -> None:
    """deploy-moe-binary-payloads.sh: `update -n D -e E --set
    code_configuration.scoring_script=X` without the YAML; the registry checks that the
    stored code holds X, as the CLI checks the user's folder on create."""
    scoring = examples / "online/model-1/onlinescoring"
    (scoring / "score_binary.py").write_text(
        "def init():\n    pass\n\ndef run(raw):\n    return raw\n"
    )
    cli("online-endpoint", "create", "-f", "endpoint.yml")
    cli("online-deployment", "create", "-f", "blue-deployment.yml", "--no-wait")
    update = ("az", "ml", "online-deployment", "update", "-n", "blue", "-e", "my-endpoint")
    code = cli.json("online-deployment", "show", "-n", "blue", "-e", "my-endpoint", "--query",
                    "code_configuration.code")  # fmt: skip
    dep = cli.json(*update, "--set", "code_configuration.scoring_script=score_binary.py",
                   "--no-wait")  # fmt: skip
    assert isinstance(dep, dict)
    assert dep["code_configuration"] == {"code": code, "scoring_script": "score_binary.py"}
    before = cli.json("online-deployment", "show", "-n", "blue", "-e", "my-endpoint")
    for script in ("missing.py", "../../../../etc/passwd"):
        line = cli.error(*update, "--set", f"code_configuration.scoring_script={script}",
                         "--no-wait")  # fmt: skip
        assert f"code_configuration.scoring_script: {script!r} is not a file in the " in line
    assert cli.json("online-deployment", "show", "-n", "blue", "-e", "my-endpoint") == before


def test_every_rule_reports_one_clear_line(cli: Cli, examples: Path) -> None:
    online = examples / "online"
    cli("online-endpoint", "create", "-f", "endpoint.yml")
    cli("online-deployment", "create", "-f", "blue-deployment.yml", "--no-wait")
    cli("online-endpoint", "update", "-n", "my-endpoint", "--traffic", "blue=100")
    before = cli.json("online-endpoint", "show", "-n", "my-endpoint")
    blue_before = cli.json("online-deployment", "show", "-n", "blue", "-e", "my-endpoint")

    (online / "broken.yml").write_text("name: x\n  auth_mode: [key\n")
    (online / "unknown-field.yml").write_text("name: other-endpoint\nauth_mod: key\n")
    (online / "azure-only.yml").write_text("name: azure-fields\npublic_network_access: disabled\n")
    (online / "missing-code.yml").write_text(
        (online / "blue-deployment.yml").read_text().replace("model-1/onlinescoring/", "nowhere/")
    )
    cases = [
        (["online-endpoint", "create", "-f", "broken.yml"], "invalid YAML"),
        (["online-endpoint", "create", "-f", "unknown-field.yml"], "auth_mod: unknown field"),
        (["online-endpoint", "create", "-f", "nope.yml"], "no such file"),
        (["online-endpoint", "create", "-f", "endpoint.yml", "--set", "name=1abc"], "is invalid"),
        (
            ["online-endpoint", "create", "-f", "endpoint.yml", "--set", "auth_mode=cert"],
            "auth_mode",
        ),
        (["online-endpoint", "create", "-f", "endpoint.yml"], "already exists"),
        (["online-endpoint", "update", "-n", "my-endpoint", "--traffic", "blue=90"], "sums to 90"),
        (["online-endpoint", "update", "-n", "my-endpoint", "--traffic", "red=0"], "'red'"),
        (
            ["online-endpoint", "update", "-n", "my-endpoint", "--traffic", "blue=ten"],
            "whole number",
        ),
        (
            ["online-endpoint", "update", "-n", "my-endpoint", "--mirror-traffic", "blue=10"],
            "cannot also receive mirrored traffic",
        ),
        (
            [
                "online-deployment",
                "create",
                "-f",
                "blue-deployment.yml",
                "--set",
                "name=green",
                "--set",
                "instance_count=0",
            ],
            "instance_count must be between 1 and 100",
        ),
        (
            [
                "online-deployment",
                "create",
                "-f",
                "blue-deployment.yml",
                "--set",
                "name=green",
                "--set",
                "request_settings.request_timeout_ms=999999",
            ],
            "request_timeout_ms must be between 1 and 180000",
        ),
        (
            ["online-deployment", "create", "-f", "missing-code.yml", "--set", "name=green"],
            "does not exist",
        ),
        (["online-deployment", "create", "-f", "blue-deployment.yml"], "already exists"),
        (
            ["online-deployment", "delete", "-n", "blue", "-e", "my-endpoint"],
            "still takes 100% of live traffic",
        ),
        (["online-endpoint", "show", "-n", "no-such-endpoint"], "does not exist"),
        (
            ["online-endpoint", "regenerate-keys", "-n", "my-endpoint", "--key-type", "third"],
            "primary",
        ),
    ]
    for args, message in cases:
        line = cli.error(*args)
        assert message in line, (args, line)
    warned = cli("online-endpoint", "create", "-f", "azure-only.yml")
    assert "public_network_access is an Azure-only field; ignored" in warned.stderr
    assert cli.json("online-endpoint", "show", "-n", "my-endpoint") == before
    assert cli.json("online-deployment", "show", "-n", "blue", "-e", "my-endpoint") == blue_before


def test_batch_endpoint_and_both_settings_forms(cli: Cli, examples: Path) -> None:
    """(No batch service runs here: the deployments stay Creating, so --no-wait.)"""
    batch = examples / "batch"
    cli("batch-endpoint", "create", "-f", str(batch / "endpoint.yml"))
    cli("batch-deployment", "create", "-f", str(batch / "deployment.yml"), "--no-wait")
    dep = cli.json("batch-deployment", "show", "-n", "ridge", "-e", "diabetes-batch")
    assert isinstance(dep, dict)
    assert dep["mini_batch_size"] == 10  # Azure prints batch deployments flat
    assert dep["retry_settings"] == {"max_retries": 3, "timeout": 30}
    assert dep["resources"] == {"instance_count": 2}
    # The older schema: batch settings at the top level.
    legacy = yaml.safe_load((batch / "deployment.yml").read_text())
    settings = legacy.pop("settings")
    legacy.update(name="legacy", **settings)
    legacy["error_threshold"] = 0
    (batch / "legacy.yml").write_text(yaml.safe_dump(legacy))
    cli("batch-deployment", "create", "-f", str(batch / "legacy.yml"), "--no-wait")
    old = cli.json("batch-deployment", "show", "-n", "legacy", "-e", "diabetes-batch")
    assert isinstance(old, dict) and old["error_threshold"] == 0
    # `create` of an existing batch deployment replaces it, as az's does (create or update:
    # imagenet-classifier's script creates its second deployment under the same name).
    legacy["error_threshold"] = 3
    (batch / "legacy.yml").write_text(yaml.safe_dump(legacy))
    again = cli("batch-deployment", "create", "-f", str(batch / "legacy.yml"), "--no-wait")
    assert "Updated batch deployment legacy" in " ".join(again.stderr.split())
    old = cli.json("batch-deployment", "show", "-n", "legacy", "-e", "diabetes-batch")
    assert isinstance(old, dict) and old["error_threshold"] == 3
    # By name, flat as `show` prints it or under settings:, as az's generic update does.
    edited = cli.json(
        "batch-deployment", "update", "-n", "legacy", "-e", "diabetes-batch",
        "--set", "mini_batch_size=5", "settings.retry_settings.max_retries=1", "--no-wait",
    )  # fmt: skip
    assert isinstance(edited, dict) and edited["mini_batch_size"] == 5
    assert edited["retry_settings"]["max_retries"] == 1 and edited["error_threshold"] == 3
    endpoint = cli.json("batch-endpoint", "show", "-n", "diabetes-batch")
    assert isinstance(endpoint, dict) and endpoint["defaults"]["deployment_name"] == "ridge"
    line = cli.error("batch-deployment", "delete", "-n", "ridge", "-e", "diabetes-batch")
    assert "is the default" in line
    cli(
        "batch-endpoint",
        "update",
        "-n",
        "diabetes-batch",
        "--set",
        "defaults.deployment_name=legacy",
    )
    cli("batch-deployment", "delete", "-n", "ridge", "-e", "diabetes-batch")
    assert (
        cli.json("batch-endpoint", "show", "-n", "diabetes-batch")["defaults"]["deployment_name"]
        == "legacy"
    )  # type: ignore[index]


def test_the_local_platform_runs_the_registry(
    local_platform: PlatformState, tmp_path: Path, in_process: InProcessCli
) -> None:
    """`sluice up` started a registry; the CLI finds it and its token from the state directory."""
    env: dict[str, str | None] = {
        "SLUICE_STATE_DIR": str(local_platform.state_dir),
        "SLUICE_REGISTRY_ADDRESS": None,
        "SLUICE_ADMIN_TOKEN": None,
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    cli = Cli(in_process, env, tmp_path)
    assert local_platform.registry_address
    cli("online-endpoint", "create", "--name", "platform-check")
    examples = Path(__file__).resolve().parents[1] / "examples/online"
    if not (examples / "model-1/model").exists():
        subprocess.run([sys.executable, str(examples.parent / "train_models.py")], check=True)
    created = cli(
        "online-deployment",
        "create",
        "-f",
        str(examples / "blue-deployment.yml"),
        "--set",
        "endpoint_name=platform-check",
    )
    if not any(p.name == "provisioner" for p in local_platform.processes):
        assert "no provisioner runs on this platform" in created.stderr
    shown = cli.json("online-endpoint", "show", "-n", "platform-check")
    assert isinstance(shown, dict) and shown["properties"]["createdBy"]
    cli("online-endpoint", "delete", "-n", "platform-check")
    assert "does not exist" in cli.error("online-endpoint", "show", "-n", "platform-check")


def test_az_flags_create_auth_mode_update_r_skip_script_validation(
    cli: Cli, examples: Path
) -> None:
    """az's `online-endpoint create --auth-mode`, `update -r` and `online-deployment create
    --skip-script-validation`, against a real registry."""
    bad = cli.error("online-endpoint", "create", "-f", "endpoint.yml", "--auth-mode", "cert")
    assert bad == (
        "error: endpoint.yml: auth_mode: Input should be 'key', 'aml_token' or 'aad_token'"
    )
    assert bad == cli.error(
        "online-endpoint", "create", "-f", "endpoint.yml", "--set", "auth_mode=cert"
    )
    assert cli.json("online-endpoint", "list") == []  # nothing was created
    # Given after --set's overrides, as az adds it; any case; aad_token is taken as aml_token.
    ep = cli.json(
        "online-endpoint", "create", "-f", "endpoint.yml", "--set", "auth_mode=key",
        "--auth-mode", "AAD_TOKEN",
    )  # fmt: skip
    assert isinstance(ep, dict) and ep["auth_mode"] == "aml_token"
    # az would refuse this script before creating (a syntax check Sluice does not make).
    (examples / "online/model-1/onlinescoring/score.py").write_text("def init(:\n")
    dep = cli.json(
        "online-deployment", "create", "-f", "blue-deployment.yml", "--skip-script-validation",
        "--no-wait",
    )  # fmt: skip
    assert isinstance(dep, dict) and dep["provisioning_state"] == "Creating"
    ep = cli.json("az", "ml", "online-endpoint", "update", "-n", "my-endpoint", "-r", "blue=100")
    assert isinstance(ep, dict) and ep["traffic"] == {"blue": 100}


def test_an_inline_model_with_a_name_is_registered_as_az_registers_it(
    cli: Cli, examples: Path
) -> None:
    """`model: {name, version, path}` in a deployment YAML (azureml-examples' ncd and
    tfserving deployments): the files become that model version, which the deployment then
    names; the same files again reuse it, other files under the same version are refused
    and nothing is created."""
    online = examples / "online"
    blue = (online / "blue-deployment.yml").read_text()
    named = blue.replace(
        "model:\n  path: model-1/model/\n",
        "model:\n  name: sklearn-regression\n  version: 2\n  path: model-1/model/\n"
        "  description: registered by its deployment\n",
    )
    assert named != blue
    (online / "named.yml").write_text(named)
    cli("online-endpoint", "create", "-f", "endpoint.yml")
    cli("online-deployment", "create", "-f", "named.yml", "--no-wait")
    model = cli.json("model", "show", "-n", "sklearn-regression", "-v", "2")
    assert isinstance(model, dict)
    assert model["description"] == "registered by its deployment"
    assert model["used_by"] == ["my-endpoint/blue"]
    # The same files under the same version: reused by a second deployment.
    cli("online-deployment", "create", "-f", "named.yml", "--set", "name=green", "--no-wait")
    again = cli.json("model", "show", "-n", "sklearn-regression", "-v", "2")
    assert isinstance(again, dict) and again["used_by"] == ["my-endpoint/blue", "my-endpoint/green"]
    # Other files under the same version: refused, nothing created.
    (online / "model-1" / "model" / "extra.txt").write_text("changed\n")
    line = cli.error(
        "online-deployment", "create", "-f", "named.yml", "--set", "name=red", "--no-wait"
    )
    assert "model 'sklearn-regression' version '2' is already registered with other files" in line
    listed = cli.json("online-deployment", "list", "-e", "my-endpoint")
    assert isinstance(listed, list) and sorted(d["name"] for d in listed) == ["blue", "green"]
    versions = cli.json("model", "list", "-n", "sklearn-regression")
    assert isinstance(versions, list) and [v["version"] for v in versions] == ["2"]
