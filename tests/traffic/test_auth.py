"""Credentials are checked by Envoy before any instance is touched (real registry keys/tokens)."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.mongo import Document
from sluice.common.resources import AuthMode, OnlineEndpointSpec
from sluice.common.secretbox import SecretBox
from sluice.registry.credentials import TokenIssuer
from sluice.sdk.client import RegistryClient
from sluice.testing.traffic import Traffic, Upstream, World, eventually
from sluice.traffic.xds.key_hash import CACHED, key_hash


async def test_keys_primary_secondary_and_rotation(
    traffic_with_registry: Traffic,
    client: RegistryClient,
    world: World,
    upstreams: Callable[[str], Upstream],
) -> None:
    traffic = traffic_with_registry
    blue = upstreams("blue")
    client.create_online_endpoint(OnlineEndpointSpec(name="keyed"))
    await world.deployment("keyed", "blue", [blue.address])
    client.set_traffic("keyed", {"blue": 100})
    creds = client.get_credentials("keyed")

    eventually(lambda: traffic.score("keyed", creds.primary_key), lambda r: r[0] == 200)
    assert traffic.score("keyed", creds.secondary_key, tls=True)[0] == 200
    before = blue.scored
    for key in (None, "wrong-key", creds.primary_key[:-1]):
        status, _, body = traffic.score("keyed", key)
        assert status == 401, key
        assert "credentials" in json.loads(body)["message"]
    # Unauthenticated calls never reach an instance, not even to learn deployment names.
    assert traffic.score("keyed", None, deployment="blue")[0] == 401
    assert traffic.score("keyed", "wrong", deployment="nope")[0] == 401
    assert blue.scored == before
    # Envoy holds hashes of the keys (key_hash.py); sending the right hash yourself does not
    # help: the filter replaces it with the hash of the request's own authorization.
    forged = [("x-sluice-key-sha256", key_hash(creds.primary_key))]
    assert traffic.score("keyed", "wrong-key", headers=forged)[0] == 401
    assert traffic.score("keyed", None, headers=forged)[0] == 401
    # Envoy keeps the hashes of the last CACHED credentials it saw and then starts over:
    # past that many, wrong keys are still refused and the right one (hashed anew) passes.
    with ThreadPoolExecutor(8) as pool:
        wrong = set(pool.map(lambda i: traffic.score("keyed", f"w{i}")[0], range(CACHED + 8)))
    assert wrong == {401}
    assert blue.scored == before
    assert traffic.score("keyed", creds.primary_key)[0] == 200
    before = blue.scored
    # The credential (and its hash) is removed before the request goes upstream.
    assert set(blue.seen_authorization) == {""}

    client.regenerate_key("keyed", "primary")
    new = client.get_credentials("keyed")
    assert new.primary_key != creds.primary_key
    eventually(
        lambda: (
            traffic.score("keyed", creds.primary_key)[0],
            traffic.score("keyed", new.primary_key)[0],
            traffic.score("keyed", creds.secondary_key)[0],
        ),
        lambda r: r == (401, 200, 200),
    )


async def test_tokens_valid_expired_foreign_and_for_another_endpoint(
    traffic_with_registry: Traffic,
    client: RegistryClient,
    world: World,
    mongo_db: AsyncDatabase[Document],
    upstreams: Callable[[str], Upstream],
) -> None:
    traffic = traffic_with_registry
    blue = upstreams("blue")
    client.create_online_endpoint(OnlineEndpointSpec(name="tokened", auth_mode=AuthMode.aml_token))
    await world.deployment("tokened", "blue", [blue.address])
    client.set_traffic("tokened", {"blue": 100})
    token = client.get_credentials("tokened").access_token
    assert token

    eventually(lambda: traffic.score("tokened", token), lambda r: r[0] == 200)
    assert traffic.score("tokened", token, tls=True, path_based=True)[0] == 200

    stored = await mongo_db["signing_keys"].find_one({"_id": "current"})
    assert stored is not None and traffic.settings.secret_key
    issuer = TokenIssuer(SecretBox(traffic.settings.secret_key).decrypt(stored["private_key"]))
    expired = issuer.issue("tokened", subject="t", now=datetime.now(UTC) - timedelta(hours=2))
    other_endpoint = issuer.issue("elsewhere", subject="t")
    foreign = TokenIssuer(TokenIssuer.generate_private_key_pem()).issue("tokened", subject="t")
    before = blue.scored
    for bad in (None, expired.value, other_endpoint.value, foreign.value, "not-a-jwt"):
        assert traffic.score("tokened", bad)[0] == 401, bad
    assert blue.scored == before
    assert set(blue.seen_authorization) == {""}
