"""Attack 3: the platform's internal doors, tried from the machine without credentials.

NATS: no connection without a user, nor with what its configuration holds (bcrypt
hashes); the audit user reads events and can neither forge nor delete them; no service
was ever refused a subject it needs (the batch jobs' own users: test_nats_permissions.py).
SecantusDB: nothing is read or written without the platform's user and password.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

import nats
import pytest
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError
from pymongo import MongoClient
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from sluice.common.mongo_auth import with_credentials
from sluice.common.nats_auth import (
    AUDIT_INBOX,
    AUDIT_USER,
    CONFIG,
    FOLDER,
    PASSWORDS,
    with_user,
)
from sluice.common.platform import PlatformState
from sluice.common.settings import Settings

from .conftest import refused_to_services

pytestmark = pytest.mark.integration


def test_the_database_refuses_reads_and_writes_without_the_password(
    local_platform: PlatformState,
) -> None:
    address = next(p.address for p in local_platform.processes if p.name == "mongodb")
    for uri in (address, with_credentials(address, "guessed")):
        client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=2000)
        with client:
            # Refused by the command (no user) or at log-in (a wrong password).
            with pytest.raises((OperationFailure, ServerSelectionTimeoutError)):
                client["sluice"]["online_endpoints"].find_one()
            with pytest.raises((OperationFailure, ServerSelectionTimeoutError)):
                client["sluice"]["online_endpoints"].insert_one({"_id": "forged"})
    # The platform's own URI (the services') reads it, and so does the compose/Kubernetes
    # way of giving a service its password (SLUICE_MONGODB_PASSWORD beside a bare URI).
    password = (local_platform.state_dir / "mongo-auth" / "password").read_text().strip()
    joined = Settings(mongodb_uri=address, mongodb_password=password).mongodb_uri
    for uri in (local_platform.mongodb_uri, joined):
        assert uri is not None
        with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            assert client["sluice"]["online_endpoints"].find_one({"_id": "forged"}) is None


def nats_address(state: PlatformState) -> str:
    return next(p.address for p in state.processes if p.name == "nats")


async def test_nats_refuses_a_connection_without_credentials(
    local_platform: PlatformState,
) -> None:
    """No user, a guessed password, or what nats-server's configuration holds (a copy of
    it is no credential: bcrypt hashes only)."""
    address = nats_address(local_platform)
    folder = local_platform.state_dir / FOLDER
    config = json.loads((folder / CONFIG).read_text())
    stored = {u["user"]: u["password"] for u in config["authorization"]["users"]}
    assert all(p.startswith("$2a$") for p in stored.values()), stored
    passwords = json.loads((folder / PASSWORDS).read_text())
    assert not any(p in (folder / CONFIG).read_text() for p in passwords.values())
    for url in (
        address,
        with_user(address, "registry", "guessed"),
        with_user(address, "registry", stored["registry"]),
    ):
        with pytest.raises(NatsError):
            await nats.connect(
                url, allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=0
            )
    log = next(p.log_path for p in local_platform.processes if p.name == "nats").read_text()
    assert "Plaintext passwords" not in log


def events_url(state: PlatformState) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluice.sdk.cli", "events-url"],
        capture_output=True,
        text=True,
        env={**os.environ, "SLUICE_STATE_DIR": str(state.state_dir), "NO_COLOR": "1"},
        timeout=60,
        check=False,
    )


async def test_the_audit_user_reads_events_and_cannot_forge_or_delete_them(
    local_platform: PlatformState,
) -> None:
    """With the URL an operator gets from `sluice events-url`, audit reads, never writes."""
    given = await asyncio.to_thread(events_url, local_platform)
    assert given.returncode == 0, given.stderr
    url = given.stdout.strip()
    assert urlsplit(url).username == AUDIT_USER and AUDIT_INBOX in given.stderr
    passwords = json.loads((local_platform.state_dir / FOLDER / PASSWORDS).read_text())
    assert url == with_user(nats_address(local_platform), AUDIT_USER, passwords[AUDIT_USER])
    client = await nats.connect(url, allow_reconnect=False, inbox_prefix=AUDIT_INBOX)
    try:
        js = client.jetstream(timeout=5)
        info = await js.stream_info("SLUICE_EVENTS")
        assert info.state.messages > 0  # the platform's services published into it
        reader = await js.subscribe(
            "sluice.events.>", stream="SLUICE_EVENTS", ordered_consumer=True
        )
        assert (await reader.next_msg(timeout=10)).subject.startswith("sluice.events.")
        denied = client.jetstream(timeout=1)
        with pytest.raises((JetStreamError, NatsError, TimeoutError)):
            await denied.publish("sluice.events.endpoint.created", b"{}")
        with pytest.raises((JetStreamError, NatsError, TimeoutError)):
            await denied.delete_stream("SLUICE_EVENTS")
        assert (await js.stream_info("SLUICE_EVENTS")).state.messages >= info.state.messages
    finally:
        await client.close()


def test_the_platforms_services_stay_within_their_nats_permissions(
    local_platform: PlatformState,
) -> None:
    """Each service has only the subjects it needs: none of them was ever refused one
    (test_batch_workers checks again after its jobs)."""
    assert refused_to_services(local_platform) == []
