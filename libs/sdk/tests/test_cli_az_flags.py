"""az's spellings of online flags, run in-process against a stand-in registry client:
`online-endpoint create --auth-mode`, `update -r`, `list --local`, and
`online-deployment create --skip-script-validation`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from sluice.common.resources import AuthMode, Meta, OnlineEndpointDoc, OnlineEndpointSpec
from sluice.common.supervisor import RunningProcess
from sluice.sdk.cli import online_endpoint
from sluice.sdk.client import OnlineEndpoint
from sluice.sdk.local import LocalDeploymentState
from sluice.testing.cli import Cli


def endpoint(spec: OnlineEndpointSpec) -> OnlineEndpoint:
    doc = OnlineEndpointDoc(spec=spec, meta=Meta())
    return OnlineEndpoint(doc, "http://127.0.0.1:1/score", "http://127.0.0.1:1/swagger.json")


class FakeRegistry:
    """Records what the CLI asks of the registry."""

    def __init__(self) -> None:
        self.created: list[OnlineEndpointSpec] = []
        self.updated: list[tuple[OnlineEndpointSpec, bool]] = []
        self.stored = OnlineEndpointSpec(name="my-endpoint", traffic={"blue": 100, "green": 0})

    def create_online_endpoint(self, spec: OnlineEndpointSpec) -> OnlineEndpoint:
        self.created.append(spec)
        return endpoint(spec)

    def get_online_endpoint(self, name: str) -> OnlineEndpoint:
        assert name == self.stored.name
        return endpoint(self.stored)

    def update_online_endpoint(
        self, spec: OnlineEndpointSpec, *, with_traffic: bool, with_mirror_traffic: bool
    ) -> OnlineEndpoint:
        del with_mirror_traffic
        self.updated.append((spec, with_traffic))
        return endpoint(spec)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRegistry:
    registry = FakeRegistry()

    @contextmanager
    def connect() -> Iterator[Any]:
        yield registry

    monkeypatch.setattr(online_endpoint, "registry", connect)
    monkeypatch.setenv("SLUICE_STATE_DIR", str(tmp_path / "state"))  # no platform runs there
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    return registry


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(capsys, monkeypatch)


CREATE = ("online-endpoint", "create", "-n", "new-endpoint")


@pytest.mark.parametrize(
    ("mode", "stored"),
    [("key", AuthMode.key), ("aml_token", AuthMode.aml_token), ("AAD_TOKEN", AuthMode.aml_token)],
)
def test_auth_mode_on_create_is_set_auth_mode(
    cli: Cli, fake: FakeRegistry, mode: str, stored: AuthMode
) -> None:
    code, _, err = cli.run(*CREATE, "--auth-mode", mode)
    assert code == 0, err
    assert [s.auth_mode for s in fake.created] == [stored]
    code, _, err = cli.run(*CREATE, "--set", f"auth_mode={mode}")
    assert code == 0, err
    assert fake.created[0] == fake.created[1]


def test_auth_mode_wins_over_a_set_of_it_as_in_az(cli: Cli, fake: FakeRegistry) -> None:
    code, _, err = cli.run(*CREATE, "--set", "auth_mode=key", "--auth-mode", "aml_token")
    assert code == 0, err
    assert fake.created[0].auth_mode is AuthMode.aml_token


@pytest.mark.parametrize("bad", ["cert", "", "aad"])
def test_a_bad_auth_mode_is_one_line_and_creates_nothing(
    cli: Cli, fake: FakeRegistry, bad: str
) -> None:
    message = cli.fails(*CREATE, "--auth-mode", bad)
    assert message == (
        "error: command line: auth_mode: Input should be 'key', 'aml_token' or 'aad_token'"
    )
    assert cli.fails(*CREATE, "--set", f"auth_mode={bad}") == message  # the same rule
    assert fake.created == []


def test_auth_mode_is_not_an_update_option_as_in_az(cli: Cli, fake: FakeRegistry) -> None:
    code, _, err = cli.run("online-endpoint", "update", "-n", "my-endpoint", "--auth-mode", "key")
    assert code == 2 and "No such option: --auth-mode" in err
    assert fake.updated == []


@pytest.mark.parametrize("prefix", [(), ("az", "ml")])
def test_update_r_is_traffic(cli: Cli, fake: FakeRegistry, prefix: tuple[str, ...]) -> None:
    args = (*prefix, "online-endpoint", "update", "-n", "my-endpoint")
    code, _, err = cli.run(*args, "-r", "blue=90 green=10", "--no-wait")
    assert code == 0, err
    spec, with_traffic = fake.updated[-1]
    assert with_traffic and spec.traffic == {"blue": 90, "green": 10}


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


def test_list_local_lists_the_local_endpoints(cli: Cli, fake: FakeRegistry, tmp_path: Path) -> None:
    del fake  # never asked: the list is read from the state folder
    assert cli.json("online-endpoint", "list", "--local") == []
    state = tmp_path / "state"
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
