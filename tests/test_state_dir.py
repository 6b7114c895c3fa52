"""The CLI finds the platform from any folder: a per-user state folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.common.settings import Settings, default_state_dir

SLUICE = [sys.executable, "-m", "sluice.sdk.cli"]


def test_default_state_dir_is_per_user_and_env_overrides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SLUICE_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir() == Path("/var/lib/sluice")  # root's home is private
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "sluice"
    assert Settings().state_dir == tmp_path / "home" / ".local" / "state" / "sluice"

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert Settings().state_dir == tmp_path / "xdg" / "sluice"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # the XDG spec: only absolute paths
    assert Settings().state_dir == tmp_path / "home" / ".local" / "state" / "sluice"

    monkeypatch.setenv("SLUICE_STATE_DIR", str(tmp_path / "explicit"))
    assert Settings().state_dir == tmp_path / "explicit"


def _cli(cwd: Path, home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(
        {
            "HOME": str(home),
            # The per-user folder under this home, also when the tests run as root.
            "XDG_STATE_HOME": str(home / ".local" / "state"),
            # Free ports for everything, so the test never collides with a running platform.
            "SLUICE_ENVOY__HTTP_PORT": "0",
            "SLUICE_ENVOY__HTTPS_PORT": "0",
            "SLUICE_PORTS__REGISTRY": "0",
            "NO_COLOR": "1",
            "COLUMNS": "200",
            **extra,
        }
    )
    return subprocess.run(
        [*SLUICE, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=180, check=False
    )


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    yield home
    _cli(tmp_path, home, "down")


@pytest.mark.integration
def test_platform_started_in_one_folder_is_found_from_another(home: Path, tmp_path: Path) -> None:
    started_in, elsewhere = tmp_path / "checkout", tmp_path / "azureml-examples" / "cli"
    started_in.mkdir()
    elsewhere.mkdir(parents=True)
    state = home / ".local" / "state" / "sluice"

    up = _cli(started_in, home, "up")
    assert up.returncode == 0, up.stderr
    assert f"state in {state}" in up.stderr
    assert not (started_in / ".sluice").exists()

    status = _cli(elsewhere, home, "status", "-o", "json")
    assert status.returncode == 0, status.stderr
    assert f"Platform in {state}" in status.stderr
    assert {row["state"] for row in json.loads(status.stdout)} == {"healthy"}
    listed = _cli(elsewhere, home, "online-endpoint", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []

    other = tmp_path / "other-state"
    overridden = _cli(elsewhere, home, "status", SLUICE_STATE_DIR=str(other))
    assert overridden.returncode == 3
    assert f"No platform runs from {other}" in overridden.stderr
    refused = _cli(elsewhere, home, "online-endpoint", "list", SLUICE_STATE_DIR=str(other))
    assert refused.returncode != 0
    assert f"no platform in {other}" in refused.stderr
