"""az's spellings of online flags that need no registry, run in-process: a bad
`online-endpoint create --auth-mode`, `update --auth-mode` refused, `list --local`, and
`online-deployment create --skip-script-validation`'s help. With a real registry:
tests/test_cli_registry.py::test_az_flags_create_auth_mode_update_r_skip_script_validation."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from sluice.common.supervisor import RunningProcess
from sluice.sdk.local import LocalDeploymentState
from sluice.testing.cli import Cli


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty state folder: no platform runs there (what needs one is in
    tests/test_cli_registry.py, against a real registry)."""
    monkeypatch.setenv("SLUICE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path / "state"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(capsys, monkeypatch)


CREATE = ("online-endpoint", "create", "-n", "new-endpoint")


@pytest.mark.parametrize("bad", ["cert", "", "aad"])
def test_a_bad_auth_mode_is_one_line_before_any_call(cli: Cli, state: Path, bad: str) -> None:
    message = cli.fails(*CREATE, "--auth-mode", bad)
    assert message == (
        "error: command line: auth_mode: Input should be 'key', 'aml_token' or 'aad_token'"
    )
    assert cli.fails(*CREATE, "--set", f"auth_mode={bad}") == message  # the same rule


def test_auth_mode_is_not_an_update_option_as_in_az(cli: Cli, state: Path) -> None:
    del state
    code, _, err = cli.run("online-endpoint", "update", "-n", "my-endpoint", "--auth-mode", "key")
    assert code == 2 and "No such option: --auth-mode" in err


def write_local(state: Path, endpoint: str, deployment: str, pid: int, port: int) -> None:
    process = RunningProcess(
        name=f"local-{deployment}",
        pid=pid,
        create_time=psutil.Process(pid).create_time() if pid > 0 else 0.0,
        log_path=state / "local" / endpoint / f"{deployment}.log",
    )
    record = LocalDeploymentState(
        endpoint=endpoint,
        deployment=deployment,
        host="127.0.0.1",
        port=port,
        metrics_port=port + 1,
        model=None,
        code_dir=None,
        scoring_script=None,
        process=process,
        started_at=0.0,
    )
    folder = state / "local" / endpoint
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{deployment}.json").write_text(record.model_dump_json())


def test_list_local_lists_the_local_endpoints(cli: Cli, state: Path) -> None:
    assert cli.json("online-endpoint", "list", "--local") == []  # read from the state folder
    write_local(state, "alpha", "blue", psutil.Process().pid, 5001)  # "running": this process
    write_local(state, "alpha", "green", 0, 5003)
    write_local(state, "beta", "red", 0, 5005)
    listed = cli.json("online-endpoint", "list", "--local")
    assert [(e["name"], e["provisioning_state"], e["deployments"]) for e in listed] == [
        ("alpha", "Succeeded", "blue, green"),
        ("beta", "Stopped", "red"),
    ]
    assert listed[0]["scoring_uri"] == "http://127.0.0.1:5001/score"
    assert listed[0] == cli.json("online-endpoint", "show", "--local", "-n", "alpha")
    code, out, _ = cli.run("online-endpoint", "list", "--local", "-o", "table")
    assert code == 0 and "Local endpoints" in out and "beta" in out


@pytest.mark.parametrize("command", ["create", "update"])
def test_skip_script_validation_is_accepted_and_says_it_changes_nothing(
    cli: Cli, command: str
) -> None:
    done = cli.complete("online-deployment", command, "--help", env={"COLUMNS": "400"})
    assert done.returncode == 0
    help_text = " ".join(done.stdout.replace("│", " ").split())
    assert "--skip-script-validation" in help_text
    assert "changes nothing" in help_text and "Sluice does not" in help_text


def test_local_views_have_azures_keys(cli: Cli, state: Path) -> None:
    # deploy-local-endpoint.sh polls `--query provisioning_state -o tsv` for "Succeeded"
    write_local(state, "alpha", "blue", psutil.Process().pid, 5001)
    code, out, err = cli.run(
        "online-deployment", "show", "--local", "-n", "blue", "-e", "alpha",
        "--query", "provisioning_state", "-o", "tsv",
    )  # fmt: skip
    assert (code, out) == (0, "Succeeded\n"), err
    shown = cli.json("online-deployment", "show", "--local", "-n", "blue", "-e", "alpha")
    assert (shown["endpoint_name"], shown["name"]) == ("alpha", "blue")
    endpoint = cli.json("online-endpoint", "show", "--local", "-n", "alpha")
    assert endpoint["openapi_uri"] == "http://127.0.0.1:5001/swagger.json"
    assert "swagger_uri" not in endpoint
    # tables keep the platform's short headers
    code, out, _ = cli.run("online-deployment", "list", "--local", "-o", "table")
    assert code == 0 and "endpoint" in out and "state" in out and "provisioning_state" not in out
