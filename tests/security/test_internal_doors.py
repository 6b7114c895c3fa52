"""Attack 3: the platform's internal doors, tried from the machine without credentials.

NATS: no connection without a user; the batch workers' user (which deployment code
holds while a batch job runs) can neither forge events nor touch the events stream.
SecantusDB: nothing is read or written without the platform's user and password.
"""

from __future__ import annotations

import json

import nats
import pytest
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError
from pymongo import MongoClient
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from sluice.common.mongo_auth import with_credentials
from sluice.common.nats_auth import FOLDER, WORKER_USER, with_user
from sluice.common.platform import PlatformState

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
    # The platform's own URI (the services') reads it.
    with MongoClient(local_platform.mongodb_uri, serverSelectionTimeoutMS=5000) as client:
        assert client["sluice"]["online_endpoints"].find_one({"_id": "forged"}) is None


def nats_address(state: PlatformState) -> str:
    return next(p.address for p in state.processes if p.name == "nats")


async def test_nats_refuses_a_connection_without_credentials(
    local_platform: PlatformState,
) -> None:
    address = nats_address(local_platform)
    for url in (address, with_user(address, "registry", "guessed")):
        with pytest.raises(NatsError):
            await nats.connect(
                url, allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=0
            )


async def test_the_batch_workers_user_cannot_forge_events_or_touch_the_stream(
    local_platform: PlatformState,
) -> None:
    passwords = json.loads((local_platform.state_dir / FOLDER / "passwords.json").read_text())
    url = with_user(nats_address(local_platform), WORKER_USER, passwords[WORKER_USER])
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    client = await nats.connect(url, allow_reconnect=False, error_cb=on_error)
    try:
        js = client.jetstream(timeout=2)
        with pytest.raises((JetStreamError, NatsError, TimeoutError)):
            await js.publish("sluice.events.endpoint.created", b"{}")
        with pytest.raises((JetStreamError, NatsError, TimeoutError)):
            await js.delete_stream("SLUICE_EVENTS")
        with pytest.raises((JetStreamError, NatsError, TimeoutError)):
            await js.pull_subscribe("sluice.events.>", durable="eavesdrop", stream="SLUICE_EVENTS")
        await client.subscribe("sluice.events.>")
        await client.flush(timeout=5)
    finally:
        await client.close()
    assert any("permissions violation for subscription" in str(e) for e in errors), errors
    # The platform's own services still publish: the stream is there, with its events.
    services_url = local_platform.nats_url  # the CLI's user
    admin = await nats.connect(services_url, allow_reconnect=False)
    try:
        info = await admin.jetstream().stream_info("SLUICE_EVENTS")
        assert info.config.name == "SLUICE_EVENTS"
    finally:
        await admin.close()
