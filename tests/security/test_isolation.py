"""Attack 1: a score.py looks for the platform's secrets and another deployment's files."""

from __future__ import annotations

import json
import os
import pwd

import pytest

from sluice.common.isolation import user_name
from sluice.common.mongo_auth import MongoUser
from sluice.common.nats_auth import FOLDER
from sluice.common.platform import LocalPlatform
from sluice.common.settings import Settings
from sluice.sdk.invoke import send

from .conftest import ENDPOINT, VICTIM_SECRET, Attacked, wait_for

pytestmark = pytest.mark.integration
NOT_ROOT = (
    "run as another user than root, the platform cannot switch users: deployments run "
    "as its user and their code can read its files (docs/security.md; "
    "SLUICE_LANDLOCK=true confines them)"
)


def findings(attacked: Attacked) -> dict:
    def scored() -> dict | None:
        status, _, body = send(
            attacked.target,
            host=attacked.host,
            path="/score",
            body=b"{}",
            headers=[("Authorization", f"Bearer {attacked.key}")],
        )
        return json.loads(body) if status == 200 else None

    return wait_for(scored, "the attacker's deployment to answer through the gateway")


def test_score_py_finds_no_platform_secret_and_no_other_deployments_files(
    attacked: Attacked,
) -> None:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    state_dir = attacked.state.state_dir
    platform = LocalPlatform(Settings(state_dir=state_dir))
    secrets = {
        "admin token": platform.admin_token(),
        "Fernet key": platform.secret_key(),
        "Mongo URI": attacked.state.mongodb_uri,
        "victim's environment": VICTIM_SECRET,
        "victim's code": "victim-code-secret-3f9c",
        "CA key": (attacked.state.state_dir / "tls" / "ca.key").read_text().splitlines()[1],
        "platform CA key": (state_dir / "pki" / "ca.key").read_text().splitlines()[1],
        "Mongo password": MongoUser(state_dir).password(),
        **{
            f"NATS password of {user}": password
            for user, password in json.loads(
                (state_dir / FOLDER / "passwords.json").read_text()
            ).items()
        },
    }
    found = findings(attacked)
    text = json.dumps(found)
    leaked = [name for name, value in secrets.items() if value in text]
    assert not leaked, f"score.py found: {leaked}"
    assert {n for n in found["env"] if n.startswith("SLUICE_")} <= {"SLUICE_INSTANCE_ID"}
    # Nothing under the state dir can be listed or read, nor the other deployment's folder.
    readable = {p: v for p, v in found["files"].items() if v not in ("denied", "missing")}
    assert not readable, readable
    state = attacked.state.state_dir
    for path in (
        state,
        state / "admin-token",
        state / "secret.key",
        state / "tls" / "ca.key",
        state / "pki" / "ca.key",
        state / FOLDER / "passwords.json",
        state / "mongo-auth" / "password",
    ):
        assert found["files"][str(path)] == "denied", path
    assert found["files"][str(state / "workspaces" / ENDPOINT / "victim")] == "denied"
    assert found["envoy_admin"] == "denied"  # a Unix socket in a private folder
    if os.geteuid() == 0:  # the platform can switch users: each deployment runs as its own
        assert pwd.getpwuid(found["uid"]).pw_name == user_name(ENDPOINT, "attacker")
        # ...and owns nothing on the way to its copies and HOME, where root works for it.
        assert found["workspace"] == {"artifacts": "denied", "home": "denied", "planted": "denied"}
