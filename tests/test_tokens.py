"""Per-user tokens with roles (`sluice token`), checked by the real registry on every call."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.access import LOG_TAIL_HIDDEN, with_log_tail
from sluice.common.events import parse_envelope
from sluice.common.mongo import Document
from sluice.common.resources import (
    ONLINE_DEPLOYMENTS,
    OnlineEndpointSpec,
    ProvisioningState,
    deployment_id,
)
from sluice.sdk.batch import BatchClient
from sluice.sdk.client import RegistryClient, SluiceError
from sluice.sdk.metrics import MetricsClient
from sluice.sdk.specs import load_online_deployment
from sluice.testing.cli import Cli as InProcessCli
from sluice.testing.plugin import RunningService, ServiceStarter
from sluice.v1 import metrics_pb2


class Cli:
    """`sluice ...` against the test's registry, as the admin or with SLUICE_TOKEN."""

    def __init__(
        self, runner: InProcessCli, registry: RunningService, cwd: Path, token: str | None = None
    ):
        self.runner, self.registry, self.cwd = runner, registry, cwd
        self.env: dict[str, str | None] = {
            "SLUICE_REGISTRY_ADDRESS": registry.address,
            "SLUICE_ADMIN_TOKEN": registry.settings.admin_token or "",
            "SLUICE_STATE_DIR": str(registry.settings.state_dir),
            "SLUICE_TOKEN": token,
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }

    def as_token(self, token: str) -> Cli:
        return Cli(self.runner, self.registry, self.cwd, token)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """In the test's process (sluice.testing.cli)."""
        return self.runner.complete(*args, env=self.env, cwd=self.cwd)

    def ok(self, *args: str) -> Any:
        result = self.run(*args, "-o", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout) if result.stdout.strip() else None

    def error(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        return result.stderr


@pytest.fixture
def cli(
    registry: RunningService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    (tmp_path / "endpoint.yml").write_text("name: tok-endpoint\nauth_mode: key\n")
    (tmp_path / "other.yml").write_text("name: tok-other\nauth_mode: key\n")
    return Cli(InProcessCli(capsys, monkeypatch), registry, tmp_path)


def client(registry: RunningService, token: str) -> RegistryClient:
    return RegistryClient(registry.address, token, actor="claimed-admin")


def refused(call: Any, code: str) -> str:
    with pytest.raises(SluiceError) as caught:
        call()
    assert caught.value.code == code, caught.value
    return str(caught.value)


async def test_roles_are_enforced_and_the_token_user_is_the_actor(
    cli: Cli, nats_broker: NatsBroker, registry: RunningService
) -> None:
    reader = cli.ok("token", "create", "--user", "alice", "--role", "reader")["token"]
    assert registry.settings.admin_token
    (cli.cwd / "model.txt").write_text("weights")
    with client(registry, registry.settings.admin_token) as admin:
        deployer = admin.create_token("bob", "deployer").secret
        admin.create_online_endpoint(OnlineEndpointSpec(name="tok-endpoint"))
        model = admin.upload(cli.cwd / "model.txt")

    # reader: reads, but no changes, no keys, no tokens (the CLI shows the registry's words).
    message = cli.as_token(reader).error("online-endpoint", "create", "-f", "other.yml")
    assert "alice (reader) may not call CreateOnlineEndpoint" in message
    with client(registry, reader) as alice:
        assert [e.doc.spec.name for e in alice.list_online_endpoints()] == ["tok-endpoint"]
        assert "may not call GetCredentials" in refused(
            lambda: alice.get_credentials("tok-endpoint"), "PERMISSION_DENIED"
        )
        assert "may not call ListTokens" in refused(alice.list_tokens, "PERMISSION_DENIED")
        # A model's files, as Azure's Reader downloads registered models.
        download = alice.download(model.digest)
        assert (download.name, download.is_directory) == ("model.txt", False)
        assert b"weights" in b"".join(download.chunks)
        spec = OnlineEndpointSpec(name="tok-other")
        refused(lambda: alice.create_online_endpoint(spec), "PERMISSION_DENIED")

    # deployer: changes things, recorded as its user whatever actor the client claims.
    with client(registry, deployer) as bob:
        bob.create_online_endpoint(OnlineEndpointSpec(name="tok-other"))
        assert "may not call CreateToken" in refused(
            lambda: bob.create_token("eve", "admin"), "PERMISSION_DENIED"
        )

    # The stream's endpoint.created events, from the start: tok-other's names bob.
    settings = registry.settings
    sub = await nats_broker.connection.jetstream().subscribe(
        f"{settings.events_subject_prefix}.endpoint.created",
        stream=settings.events_stream,
        ordered_consumer=True,
    )
    actors = {}
    while "tok-other" not in actors:
        event = parse_envelope((await sub.next_msg(timeout=15)).data)
        actors[event.subject] = event.actor
    assert actors == {"tok-endpoint": "claimed-admin", "tok-other": "bob"}
    await sub.unsubscribe()


async def test_revoked_tokens_are_refused_and_only_hashes_are_stored(
    cli: Cli, registry: RunningService, mongo_db: AsyncDatabase[Document]
) -> None:
    created = cli.ok("token", "create", "--user", "carol", "--role", "reader", "-d", "ci")
    token = created["token"]
    with client(registry, token) as carol:
        assert carol.list_online_endpoints() == []
    stored = await mongo_db["user_tokens"].find_one({"_id": created["id"]})
    assert stored is not None
    assert token not in json.dumps(stored, default=str)
    secret = token.removeprefix(f"sluice_{created['id']}_")
    assert stored["hash"] == hashlib.sha256(secret.encode()).hexdigest()
    listed = cli.ok("token", "list")
    assert [(t["user"], t["role"], t["description"]) for t in listed] == [("carol", "reader", "ci")]
    assert "token" not in listed[0]  # never shown again

    cli.ok("token", "revoke", created["id"])
    with client(registry, token) as carol:
        message = refused(carol.list_online_endpoints, "UNAUTHENTICATED")
        assert f"token {created['id']} was revoked" in message
    assert registry.settings.admin_token
    with client(registry, registry.settings.admin_token) as admin:
        assert admin.list_tokens() == []
        assert admin.list_tokens(include_revoked=True)[0].HasField("revoked_at")
    # A made-up token of the right shape is refused too.
    with client(registry, f"sluice_{created['id']}_{'x' * 43}") as forged:
        assert "not a token of this platform" in refused(
            forged.list_online_endpoints, "UNAUTHENTICATED"
        )


def test_bad_token_requests_are_refused_clearly(cli: Cli) -> None:
    assert "role must be one of reader, deployer, admin" in cli.error(
        "token", "create", "--user", "dave", "--role", "owner"
    )
    assert "user must be 1-64 letters" in cli.error(
        "token", "create", "--user", "no spaces", "--role", "reader"
    )
    assert "no token 'nope'" in cli.error("token", "revoke", "nope")


async def test_tokens_expire_with_a_clear_message(
    cli: Cli, registry: RunningService, mongo_db: AsyncDatabase[Document]
) -> None:
    created = cli.ok("token", "create", "--user", "erin", "--role", "reader", "--expires-in", "7d")
    expires = datetime.fromisoformat(created["expires_at"])
    assert abs((expires - datetime.now(UTC)) - timedelta(days=7)) < timedelta(minutes=5)
    [listed] = cli.ok("token", "list")
    assert listed["expires_at"] == created["expires_at"]
    with client(registry, created["token"]) as erin:
        assert erin.list_online_endpoints() == []
        # A week later (the clock moved on in the stored document):
        await mongo_db["user_tokens"].update_one(
            {"_id": created["id"]},
            {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}},
        )
        message = refused(erin.list_online_endpoints, "UNAUTHENTICATED")
    assert f"token {created['id']} of erin expired at" in message
    assert "sluice token create" in message

    # Bad lifetimes: refused, saying why, and no token made.
    for bad in ("7x", "0d", "-1d", "soon"):
        result = cli.run(
            "token", "create", "--user", "erin", "--role", "reader", "--expires-in", bad
        )
        assert result.returncode != 0 and "not a duration" in result.stderr, result.stderr
    assert registry.settings.admin_token
    with client(registry, registry.settings.admin_token) as admin:
        assert "expires_in_s must be between" in refused(
            lambda: admin.create_token("erin", "reader", expires_in_s=-5), "INVALID_ARGUMENT"
        )
        assert [t.id for t in admin.list_tokens()] == [created["id"]]


async def test_batch_and_metrics_check_role_tokens_like_the_registry(
    start_service: ServiceStarter, registry: RunningService, mongo_db: AsyncDatabase[Document]
) -> None:
    metrics_service = start_service("metrics")
    batch_service = start_service("batch")
    assert registry.settings.admin_token
    with client(registry, registry.settings.admin_token) as admin:
        reader = admin.create_token("alice", "reader")
        deployer = admin.create_token("bob", "deployer").secret
    with MetricsClient(metrics_service.address, reader.secret) as metrics:
        assert metrics.list_alert_rules() == []
        assert "alice (reader) may not call CreateAlertRule" in refused(
            lambda: metrics.create_alert_rule(metrics_pb2.AlertRule(name="r")), "PERMISSION_DENIED"
        )
        refused(lambda: metrics.request_logs("any"), "PERMISSION_DENIED")  # callers' payloads
        assert metrics.list_alert_rules() == []
    with BatchClient(batch_service.address, reader.secret) as batch:
        assert batch.list() == []
        assert "alice (reader) may not call CancelJob" in refused(
            lambda: batch.cancel("nope"), "PERMISSION_DENIED"
        )
        # A job's output is what a model made of callers' data: read as logs are.
        assert "alice (reader) may not call DownloadJobOutput" in refused(
            lambda: batch.download_output("nope"), "PERMISSION_DENIED"
        )
    with BatchClient(batch_service.address, deployer) as batch:
        refused(lambda: batch.cancel("nope"), "NOT_FOUND")  # let in: the job does not exist
        refused(lambda: batch.download_output("nope"), "NOT_FOUND")
    with MetricsClient(metrics_service.address, deployer) as metrics:
        refused(lambda: metrics.delete_alert_rule("nope"), "NOT_FOUND")
    await mongo_db["user_tokens"].update_one(
        {"_id": reader.token.id}, {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}}
    )
    with MetricsClient(metrics_service.address, reader.secret) as metrics:
        assert "expired at" in refused(metrics.list_alert_rules, "UNAUTHENTICATED")
    with BatchClient(batch_service.address, f"sluice_{reader.token.id}_{'x' * 43}") as batch:
        assert "not a token of this platform" in refused(batch.list, "UNAUTHENTICATED")


async def test_a_reader_sees_why_a_deployment_failed_but_not_its_log_lines(
    registry: RunningService, examples: Path, mongo_db: AsyncDatabase[Document]
) -> None:
    """A deployment whose init() failed says so with the instance's last log lines: what
    scoring code printed, which a reader may not read (no GetLogs), so a reader's status
    leaves them out and says so; a deployer's keeps them (audit-rest finding 15)."""
    assert registry.settings.admin_token
    with client(registry, registry.settings.admin_token) as admin:
        reader = admin.create_token("dora", "reader").secret
        deployer = admin.create_token("dan", "deployer").secret
        admin.create_online_endpoint(OnlineEndpointSpec(name="tok-failed"))
        loaded = load_online_deployment(
            examples / "online/blue-deployment.yml", admin.upload, endpoint_name="tok-failed"
        )
        admin.create_online_deployment(loaded.spec)
    # What the provisioner writes (ProvisionerStore.set_state) when init() fails.
    why = "instance tok-failed-blue-1 exited with code 1 before it was ready (init() failed?)."
    message = with_log_tail(why, "ValueError: bad row from customer 4711")
    await mongo_db[ONLINE_DEPLOYMENTS].update_one(
        {"_id": deployment_id("tok-failed", "blue")},
        {
            "$set": {
                "meta.provisioning_state": ProvisioningState.failed.value,
                "meta.status_message": message,
            }
        },
    )
    with client(registry, reader) as dora:
        shown = dora.get_online_deployment("tok-failed", "blue").meta.status_message
        [listed] = dora.list_online_deployments("tok-failed")
    assert shown == listed.meta.status_message == why + LOG_TAIL_HIDDEN
    with client(registry, deployer) as dan:
        assert dan.get_online_deployment("tok-failed", "blue").meta.status_message == message


def test_az_access_token_is_a_short_lived_deployer_token_never_the_admin_token(
    cli: Cli, registry: RunningService
) -> None:
    """`az account get-access-token --resource https://ml.azure.com` (through the az
    forwarder) while the CLI holds the admin token: a deployer token made for the script,
    expiring in an hour, since scripts send that token to other hosts too."""
    got = cli.ok("az", "account", "get-access-token", "--resource", "https://ml.azure.com")
    token = got["accessToken"]
    assert token and token != registry.settings.admin_token
    assert 3500 < got["expires_on"] - time.time() <= 3600
    [made] = [t for t in cli.ok("token", "list") if t["user"] == "az-account-get-access-token"]
    assert made["role"] == "deployer" and made["expires_at"]
    scripted = cli.as_token(token)
    assert scripted.ok("online-endpoint", "list") == []  # a deployer reads and deploys
    said = scripted.error("token", "create", "--user", "x", "--role", "admin")
    assert "(deployer) may not call CreateToken" in said
