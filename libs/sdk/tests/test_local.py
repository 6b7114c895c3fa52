"""`LocalRunner` against real inference server processes, and `missing_requirements`."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from sluice.common.resources import RequestSettings
from sluice.common.supervisor import RunningProcess, is_alive
from sluice.sdk.local import LocalRunError, LocalRunner, missing_requirements

SCRIPT = """
import json, os

def init():
    global greeting
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "greeting.txt")) as f:
        greeting = f.read().strip()

def run(raw_data):
    name = json.loads(raw_data)["name"]
    if name == "fail":
        raise RuntimeError("no such name")
    return {"message": f"{greeting}, {name}", "cwd": os.getcwd(), "env": os.environ.get("COLOR")}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "greeting.txt").write_text("hello\n")
    (tmp_path / "onlinescoring").mkdir()
    (tmp_path / "onlinescoring" / "score.py").write_text(textwrap.dedent(SCRIPT))
    return tmp_path


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[LocalRunner]:
    runner = LocalRunner(tmp_path / "state", start_timeout_s=60)
    yield runner
    for deployment in runner.list():
        runner.stop(deployment.endpoint, deployment.deployment)


@pytest.mark.integration  # starts inference server processes
def test_start_invoke_logs_list_and_stop(runner: LocalRunner, project: Path) -> None:
    info = runner.start(
        "my-endpoint",
        "blue",
        model=project / "model",
        code_dir=project / "onlinescoring",
        scoring_script="score.py",
        request_settings=RequestSettings(request_timeout_ms=2000),
        environment_variables={"COLOR": "blue"},
    )
    assert info.alive and info.scoring_uri.endswith("/score")
    state_file = runner.root / "my-endpoint" / "blue.json"
    assert json.loads(state_file.read_text())["deployment"] == "blue"

    reply = runner.invoke("my-endpoint", {"name": "ada"})
    assert reply.status == 200
    assert reply.json() == {
        "message": "hello, ada",
        "cwd": str((project / "onlinescoring").resolve()),
        "env": "blue",
    }
    failed = runner.invoke("my-endpoint", {"name": "fail"}, deployment="blue")
    assert failed.status == 500
    assert "no such name" in failed.json()["message"]

    assert '"ready"' in runner.logs("my-endpoint", "blue")
    assert len(runner.logs("my-endpoint", lines=2).splitlines()) == 2
    assert [(d.endpoint, d.deployment, d.alive) for d in runner.list()] == [
        ("my-endpoint", "blue", True)
    ]

    process = RunningProcess.model_validate(json.loads(state_file.read_text())["process"])
    # Another runner (a later CLI command) finds the deployment from the state files alone.
    later = LocalRunner(runner.root.parent)
    assert later.stop("my-endpoint") == ["blue"]
    assert not is_alive(process)
    assert not state_file.exists()
    assert later.list() == []


@pytest.mark.integration  # starts inference server processes
def test_failing_init_is_an_error_with_the_traceback(runner: LocalRunner, project: Path) -> None:
    (project / "onlinescoring" / "score.py").write_text(
        "def init():\n    raise ValueError('model file is corrupt')\n\ndef run(raw):\n    pass\n"
    )
    with pytest.raises(LocalRunError) as error:
        runner.start("ep", "green", project / "model", project / "onlinescoring", "score.py")
    message = str(error.value)
    assert "ep/green failed to start" in message
    assert "ValueError: model file is corrupt" in message
    assert runner.list() == []


def test_invoking_an_unknown_endpoint_says_so(runner: LocalRunner) -> None:
    with pytest.raises(LocalRunError, match="no local deployment nope"):
        runner.invoke("nope", {"name": "x"})


def test_missing_requirements_of_a_conda_file(tmp_path: Path) -> None:
    yaml_version = metadata.version("pyyaml")
    conda = tmp_path / "conda.yml"
    conda.write_text(
        textwrap.dedent(
            f"""
            name: model-env
            channels: [conda-forge]
            dependencies:
              - python=3.11
              - pip
              - conda-forge::pyyaml
              - surely-not-installed-conda-pkg=1.0
              - pip:
                  - pyyaml=={yaml_version}
                  - structlog>=1
                  - not-installed-pip-package-xyz>=2
                  - psutil==0.0.1
                  - --extra-index-url https://example.invalid/simple
            """
        )
    )
    expected = [
        "surely-not-installed-conda-pkg",
        "not-installed-pip-package-xyz>=2",
        "psutil==0.0.1",
    ]
    assert missing_requirements(conda) == expected
    assert missing_requirements(str(conda)) == expected
    assert missing_requirements(conda.read_text()) == expected
    assert missing_requirements(["structlog", "nothing-here-abc"]) == ["nothing-here-abc"]


@pytest.mark.integration  # starts inference server processes
def test_start_reports_missing_requirements(runner: LocalRunner, project: Path) -> None:
    info = runner.start(
        "req-endpoint",
        "blue",
        project / "model",
        project / "onlinescoring",
        "score.py",
        requirements=["structlog", "not-installed-pip-package-xyz"],
    )
    assert info.missing_requirements == ["not-installed-pip-package-xyz"]
