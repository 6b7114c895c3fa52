"""`--local`: a deployment on this machine with no control plane, driven through the CLI,
in the deployment's own environment (built as the platform builds it; here in the session's
folder of environments, as the platform's provisioner shares its own)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def shared_envs(envs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SLUICE_ENVS_DIR", str(envs_dir))
    return envs_dir


def sluice(state: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLUICE_STATE_DIR": str(state), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "sluice.sdk.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_local_create_invoke_logs_delete(
    trained_examples: Path, tmp_path: Path, shared_envs: Path
) -> None:
    online = trained_examples / "online"
    state = tmp_path / "state"
    created = sluice(
        state, online, "online-deployment", "create", "--local", "-f", "blue-deployment.yml"
    )
    assert created.returncode == 0, created.stderr
    assert "is ready" in created.stderr
    # It runs in the environment its conda file describes, not in the CLI's.
    [record] = (state / "local" / "my-endpoint").glob("blue.json")
    server = psutil.Process(json.loads(record.read_text())["process"]["pid"])
    assert server.cmdline()[0].startswith(str(shared_envs)), server.cmdline()
    assert "lacks" not in created.stderr  # no "this Python environment lacks ..." warning
    shown = json.loads(sluice(state, online, "online-endpoint", "show", "--local",
                              "-n", "my-endpoint", "-o", "json").stdout)  # fmt: skip
    assert shown["provisioning_state"] == "Succeeded" and shown["deployments"] == "blue"
    assert shown["scoring_uri"].startswith("http://127.0.0.1:")
    dep = json.loads(sluice(state, online, "online-deployment", "show", "--local", "-n", "blue",
                            "-e", "my-endpoint", "-o", "json").stdout)  # fmt: skip
    assert (dep["name"], dep["provisioning_state"], dep["scoring_uri"]) == (
        "blue", "Succeeded", shown["scoring_uri"])  # fmt: skip
    missing = sluice(state, online, "online-deployment", "show", "--local", "-n", "red",
                     "-e", "my-endpoint")  # fmt: skip
    assert missing.returncode == 1 and "no local deployment red of my-endpoint" in missing.stderr
    scored = sluice(state, online, "online-endpoint", "invoke", "--local", "-n", "my-endpoint",
                    "--request-file", "sample-request.json")  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    predictions = json.loads(scored.stdout)
    assert isinstance(predictions, list) and len(predictions) == 2
    # A script's `--request-file <(...)`: bash passes a pipe, /dev/fd/63, no regular file.
    env = {**os.environ, "SLUICE_STATE_DIR": str(state), "NO_COLOR": "1"}
    command = (f"{shlex.quote(sys.executable)} -m sluice.sdk.cli online-endpoint invoke --local "
               "-n my-endpoint --request-file <(cat sample-request.json)")  # fmt: skip
    bash = shutil.which("bash") or "/bin/bash"
    piped = subprocess.run([bash, "-c", command], cwd=online, env=env, capture_output=True,
                           text=True, timeout=120, check=False)  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout) == predictions
    logs = sluice(state, online, "online-deployment", "get-logs", "--local", "-n", "blue",
                  "-e", "my-endpoint")  # fmt: skip
    assert "model 1: request received" in logs.stdout
    # `update --local -f` (as az's) restarts it from its YAML: the changed script answers.
    script = online / "model-1/onlinescoring/score.py"
    script.write_text(
        script.read_text().replace("return result.tolist()", 'return {"v2": result.tolist()}')
    )
    refused = sluice(state, online, "online-deployment", "update", "--local", "-n", "blue",
                     "-e", "my-endpoint")  # fmt: skip
    assert refused.returncode == 1 and "give --file" in refused.stderr
    updated = sluice(state, online, "online-deployment", "update", "--local",
                     "-f", "blue-deployment.yml")  # fmt: skip
    assert updated.returncode == 0, updated.stderr
    rescored = sluice(state, online, "online-endpoint", "invoke", "--local", "-n", "my-endpoint",
                      "--request-file", "sample-request.json")  # fmt: skip
    assert "v2" in json.loads(rescored.stdout)
    (online / "bad.json").write_text("{not json")
    failed = sluice(state, online, "online-endpoint", "invoke", "--local", "-n", "my-endpoint",
                    "--request-file", "bad.json")  # fmt: skip
    assert failed.returncode == 1 and failed.stderr.startswith("error: HTTP 500")
    assert "Traceback" not in failed.stderr
    deleted = sluice(state, online, "online-deployment", "delete", "--local", "-n", "blue",
                     "-e", "my-endpoint")  # fmt: skip
    assert deleted.returncode == 0, deleted.stderr
    gone = sluice(state, online, "online-endpoint", "invoke", "--local", "-n", "my-endpoint",
                  "--request-file", "sample-request.json")  # fmt: skip
    assert gone.returncode == 1 and "no local deployment" in gone.stderr


def test_local_init_failure_is_reported_with_its_traceback(
    trained_examples: Path, tmp_path: Path
) -> None:
    online = trained_examples / "online"
    (online / "model-1/onlinescoring/score.py").write_text(
        "def init():\n    raise ValueError('weights file missing')\n\ndef run(r):\n    return r\n"
    )
    created = sluice(tmp_path / "state", online, "online-deployment", "create", "--local",
                     "-f", "blue-deployment.yml")  # fmt: skip
    assert created.returncode == 1
    assert "weights file missing" in created.stderr
    assert created.stderr.count("error:") == 1
    # The traceback reads as lines, not as one JSON string with escaped newlines.
    lines = [line.strip() for line in created.stderr.splitlines()]
    assert "Traceback (most recent call last):" in lines
    assert "ValueError: weights file missing" in lines
    assert "\\n" not in created.stderr
