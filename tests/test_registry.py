"""The registry as a real process: CRUD, validation, concurrency, events, restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from faststream.nats import NatsBroker
from nats.js.api import ConsumerConfig, DeliverPolicy

import sluice.sdk.client
from sluice.common.resources import AuthMode, OnlineEndpointSpec, ProvisioningState
from sluice.sdk import azure_views
from sluice.sdk.client import RegistryClient, SluiceError
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.testing.plugin import RunningService, ServiceStarter

pytestmark = pytest.mark.integration


def create_blue(client: RegistryClient, examples: Path, name: str = "blue") -> None:
    client.create_online_endpoint(load_online_endpoint(examples / "online/endpoint.yml").spec)
    spec = load_online_deployment(
        examples / "online/blue-deployment.yml", client.upload, name=name
    ).spec
    client.create_online_deployment(spec)


def test_endpoint_and_deployment_round_trip(client: RegistryClient, examples: Path) -> None:
    create_blue(client, examples)
    endpoint = client.get_online_endpoint("my-endpoint")
    assert endpoint.doc.spec.auth_mode is AuthMode.key
    assert endpoint.scoring_uri.startswith("https://localhost:")
    assert endpoint.scoring_uri.endswith("/endpoints/my-endpoint/score")
    blue = client.get_online_deployment("my-endpoint", "blue")
    assert blue.meta.provisioning_state is ProvisioningState.creating
    assert blue.spec.code_configuration.scoring_script == "score.py"
    assert blue.spec.request_settings.max_concurrent_requests_per_instance == 4
    assert blue.spec.model.artifact is not None and blue.spec.model.artifact.is_directory
    assert "scikit-learn" in blue.spec.environment.conda_file
    assert [d.spec.name for d in client.list_online_deployments("my-endpoint")] == ["blue"]


def test_artifacts_are_frozen_copies(
    client: RegistryClient, registry: RunningService, examples: Path
) -> None:
    create_blue(client, examples)
    ref = client.get_online_deployment("my-endpoint", "blue").spec.code_configuration.code
    assert ref is not None
    stored = registry.settings.state_dir / "artifacts/sha256" / ref.digest.split(":")[1] / ref.name
    assert (stored / "score.py").read_text() == (
        examples / "online/model-1/onlinescoring/score.py"
    ).read_text()
    # Editing the user's folder afterwards changes nothing that was stored...
    (examples / "online/model-1/onlinescoring/score.py").write_text("def run(x): return 0\n")
    assert "joblib" in (stored / "score.py").read_text()
    # ...and uploading the same content again gives the same digest.
    again = client.upload(examples / "online/model-2/onlinescoring")
    assert again.digest != ref.digest
    assert client.upload(examples / "online/model-2/onlinescoring").digest == again.digest


def test_traffic_merge_and_its_rules(client: RegistryClient, examples: Path) -> None:
    create_blue(client, examples)
    green = load_online_deployment(examples / "online/green-deployment.yml", client.upload).spec
    client.create_online_deployment(green)
    assert client.set_traffic("my-endpoint", {"blue": 100}).doc.spec.traffic == {"blue": 100}
    split = client.set_traffic("my-endpoint", {"blue": 90, "green": 10}).doc.spec.traffic
    assert split == {"blue": 90, "green": 10}
    mirrored = client.set_traffic("my-endpoint", {"green": 0, "blue": 100})
    mirrored = client.set_traffic("my-endpoint", {"green": 10}, mirror=True)
    assert mirrored.doc.spec.mirror_traffic == {"green": 10}

    cases = [
        ({"green": 10}, False, "sums to 110"),
        ({"red": 10}, False, "'red', which does not exist"),
        ({"blue": 101}, False, "whole percentage 0-100"),
        ({"green": 60}, True, "the most allowed is 50%"),
        ({"green": 0, "blue": 10}, True, "takes 100% of live traffic"),
        ({"blue": 10}, True, "one deployment only"),
    ]
    before = client.get_online_endpoint("my-endpoint").doc
    for shares, mirror, message in cases:
        with pytest.raises(SluiceError) as err:
            client.set_traffic("my-endpoint", shares, mirror=mirror)
        assert err.value.code == "INVALID_ARGUMENT"
        assert message in str(err.value)
    assert client.get_online_endpoint("my-endpoint").doc == before


def test_delete_rules(client: RegistryClient, examples: Path) -> None:
    create_blue(client, examples)
    client.set_traffic("my-endpoint", {"blue": 100})
    with pytest.raises(SluiceError) as err:
        client.delete_online_deployment("my-endpoint", "blue")
    assert err.value.code == "FAILED_PRECONDITION"
    assert "still takes 100% of live traffic" in str(err.value)
    assert client.get_online_deployment("my-endpoint", "blue").spec.name == "blue"
    # Deleting the endpoint deletes its deployments, and the name is free again at once.
    client.delete_online_endpoint("my-endpoint")
    with pytest.raises(SluiceError) as missing:
        client.get_online_deployment("my-endpoint", "blue")
    assert missing.value.code == "NOT_FOUND"
    create_blue(client, examples)
    assert client.get_online_deployment("my-endpoint", "blue").meta.version == 1


def test_rejected_calls_change_nothing(client: RegistryClient, examples: Path) -> None:
    create_blue(client, examples)
    endpoint_before = client.get_online_endpoint("my-endpoint").doc
    blue_before = client.get_online_deployment("my-endpoint", "blue")
    bad_endpoint = OnlineEndpointSpec(name="9-starts-with-digit")
    bad_calls = [
        (lambda: client.create_online_endpoint(bad_endpoint), "INVALID_ARGUMENT", "is invalid"),
        (
            lambda: client.create_online_endpoint(endpoint_before.spec),
            "ALREADY_EXISTS",
            "already exists",
        ),
        (
            lambda: client.update_online_deployment(
                blue_before.spec.model_copy(update={"instance_count": 0})
            ),
            "INVALID_ARGUMENT",
            "instance_count must be between 1 and 100",
        ),
        (
            lambda: client.update_online_deployment(
                blue_before.spec.model_copy(
                    update={
                        "request_settings": blue_before.spec.request_settings.model_copy(
                            update={"request_timeout_ms": 200_000}
                        )
                    }
                )
            ),
            "INVALID_ARGUMENT",
            "request_timeout_ms must be between 1 and 180000",
        ),
        (
            lambda: client.create_online_deployment(blue_before.spec),
            "ALREADY_EXISTS",
            "already exists",
        ),
        (
            lambda: client.create_online_deployment(
                blue_before.spec.model_copy(update={"name": "x"})
            ),
            "INVALID_ARGUMENT",
            "use 3-32 characters",
        ),
        (lambda: client.regenerate_key("my-endpoint", "tertiary"), "INVALID_ARGUMENT", "primary"),
        (lambda: client.get_online_endpoint("nope-nope"), "NOT_FOUND", "does not exist"),
    ]
    for call, code, message in bad_calls:
        with pytest.raises(SluiceError) as err:
            call()
        assert err.value.code == code, err.value
        assert message in str(err.value)
    assert client.get_online_endpoint("my-endpoint").doc == endpoint_before
    assert client.get_online_deployment("my-endpoint", "blue") == blue_before


def test_two_concurrent_updates_cannot_both_win(client: RegistryClient, examples: Path) -> None:
    create_blue(client, examples)
    spec = client.get_online_endpoint("my-endpoint").doc.spec
    version = client.get_online_endpoint("my-endpoint").doc.meta.version
    outcomes: list[str] = []
    for description in ("first writer", "second writer"):
        try:
            client.update_online_endpoint(
                spec.model_copy(update={"description": description}),
                with_traffic=False,
                with_mirror_traffic=False,
                expected_version=version,
            )
            outcomes.append("won")
        except SluiceError as exc:
            assert exc.code == "ABORTED"
            assert "read it again and retry" in str(exc)
            outcomes.append("aborted")
    assert outcomes == ["won", "aborted"]
    stored = client.get_online_endpoint("my-endpoint").doc
    assert stored.spec.description == "first writer"
    assert stored.meta.version == version + 1


async def test_racing_updates_in_parallel_lose_nothing(
    registry: RunningService, examples: Path
) -> None:
    """Many clients at once, each with the version it read: exactly one write per version."""
    token = registry.settings.admin_token
    assert token
    with RegistryClient(registry.address, token) as client:
        create_blue(client, examples)
        version = client.get_online_endpoint("my-endpoint").doc.meta.version
        spec = client.get_online_endpoint("my-endpoint").doc.spec

    def attempt(i: int) -> bool:
        with RegistryClient(registry.address, token) as c:
            try:
                c.update_online_endpoint(
                    spec.model_copy(update={"description": f"writer {i}"}),
                    with_traffic=False,
                    with_mirror_traffic=False,
                    expected_version=version,
                )
                return True
            except SluiceError as exc:
                assert exc.code == "ABORTED"
                return False

    results = await asyncio.gather(*(asyncio.to_thread(attempt, i) for i in range(8)))
    assert sum(results) == 1


async def test_a_deployment_delete_racing_a_traffic_change_leaves_no_route_to_nothing(
    registry: RunningService, examples: Path
) -> None:
    """Delete blue while another client moves all traffic to it: one of the two must lose.
    Both winning would leave the endpoint sending 100% to a deployment that is gone."""
    token = registry.settings.admin_token
    assert token
    with RegistryClient(registry.address, token) as client:
        create_blue(client, examples)
        green = load_online_deployment(
            examples / "online/green-deployment.yml", client.upload, name="green"
        ).spec
        client.create_online_deployment(green)
        client.set_traffic("my-endpoint", {"green": 100})
        blue = client.get_online_deployment("my-endpoint", "blue").spec

    def shift() -> str:
        with RegistryClient(registry.address, token) as c:
            try:
                c.set_traffic("my-endpoint", {"blue": 100, "green": 0})
                return "shifted"
            except SluiceError as exc:
                assert exc.code == "INVALID_ARGUMENT" and "does not exist" in str(exc), exc
                return "refused"

    def delete() -> str:
        with RegistryClient(registry.address, token) as c:
            try:
                c.delete_online_deployment("my-endpoint", "blue")
                return "deleted"
            except SluiceError as exc:
                assert exc.code == "FAILED_PRECONDITION", exc
                return "refused"

    outcomes = set()
    with RegistryClient(registry.address, token) as client:
        for _ in range(12):
            results = await asyncio.gather(asyncio.to_thread(shift), asyncio.to_thread(delete))
            outcomes.add(tuple(results))
            traffic = client.get_online_endpoint("my-endpoint").doc.spec.traffic
            names = {d.spec.name for d in client.list_online_deployments("my-endpoint")}
            assert set(traffic) <= names, (results, traffic, names)
            if "blue" in names:
                client.set_traffic("my-endpoint", {"blue": 0, "green": 100})
                client.delete_online_deployment("my-endpoint", "blue")
            client.create_online_deployment(blue)
    assert outcomes <= {("shifted", "refused"), ("refused", "deleted")}, outcomes


def test_credentials_and_key_rotation(client: RegistryClient, examples: Path) -> None:
    create_blue(client, examples)
    first = client.get_credentials("my-endpoint")
    assert len(first.primary_key) >= 43 and len(first.secondary_key) >= 43
    assert first.primary_key != first.secondary_key
    client.regenerate_key("my-endpoint", "secondary")
    second = client.get_credentials("my-endpoint")
    assert second.primary_key == first.primary_key
    assert second.secondary_key != first.secondary_key


def test_tokens_verify_against_the_published_jwks(client: RegistryClient) -> None:
    import jwt

    client.create_online_endpoint(
        OnlineEndpointSpec(name="tok-endpoint", auth_mode=AuthMode.aml_token)
    )
    creds = client.get_credentials("tok-endpoint")
    assert creds.auth_mode is AuthMode.aml_token and creds.expiry_time is not None
    jwks = jwt.PyJWKSet.from_json(client.jwks())
    claims = jwt.decode(
        creds.access_token,
        jwks.keys[0].key,
        algorithms=["ES256"],
        audience="sluice-endpoint/tok-endpoint",
        issuer="sluice-registry",
    )
    assert claims["sub"] == "tester"
    # `get-credentials -o json` as Azure's: the token's times in seconds since the epoch,
    # a refresh due before it expires.
    shown = azure_views.credentials(creds)
    assert shown["expiryTimeUtc"] == claims["exp"]
    assert claims["iat"] < shown["refreshAfterTimeUtc"] < claims["exp"]
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(
            creds.access_token,
            jwks.keys[0].key,
            algorithms=["ES256"],
            audience="sluice-endpoint/other-endpoint",
        )


async def test_keys_are_encrypted_at_rest(
    client: RegistryClient, examples: Path, mongo_db: object
) -> None:
    create_blue(client, examples)
    creds = client.get_credentials("my-endpoint")
    raw = await mongo_db["online_endpoints"].find_one({"_id": "my-endpoint"})  # type: ignore[index]
    dumped = json.dumps(raw, default=str)
    assert creds.primary_key not in dumped and creds.secondary_key not in dumped


def test_unauthenticated_calls_are_refused(registry: RunningService) -> None:
    for token in ("wrong-token", ""):
        with RegistryClient(registry.address, token) as stranger:
            with pytest.raises(SluiceError) as err:
                stranger.list_online_endpoints()
            assert err.value.code == "UNAUTHENTICATED"
    # Health stays open for load balancers.
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(registry.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_pagination_returns_every_endpoint_once(
    client: RegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pages of 50 (the SDK asks for 500): three pages, the last one partial, as 1,203
    # endpoints would give at 500, at a tenth of the creates.
    monkeypatch.setattr(sluice.sdk.client, "PAGE_SIZE", 50)
    names = [f"ep-{i:04d}" for i in range(123)]
    for name in names:
        client.create_online_endpoint(OnlineEndpointSpec(name=name))
    listed = [e.doc.spec.name for e in client.list_online_endpoints()]
    assert listed == names


async def test_events_for_every_change(
    client: RegistryClient, examples: Path, nats_broker: NatsBroker, registry: RunningService
) -> None:
    create_blue(client, examples)
    client.set_traffic("my-endpoint", {"blue": 100})
    client.regenerate_key("my-endpoint", "primary")
    client.set_traffic("my-endpoint", {"blue": 0})
    client.delete_online_endpoint("my-endpoint")

    settings = registry.settings
    js = nats_broker.connection.jetstream()
    sub = await js.pull_subscribe(
        f"{settings.events_subject_prefix}.>",
        durable="audit-test",
        stream=settings.events_stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    seen: list[tuple[str, dict[str, object], str]] = []
    deadline = asyncio.get_running_loop().time() + 10
    while len(seen) < 9 and asyncio.get_running_loop().time() < deadline:
        for msg in await sub.fetch(20, timeout=2):
            body = json.loads(msg.data)
            seen.append(
                (
                    msg.subject.removeprefix(settings.events_subject_prefix + "."),
                    body["data"],
                    body["actor"],
                )
            )
            await msg.ack()
    subjects = [s for s, _, _ in seen]
    assert subjects == [
        "endpoint.created",
        "deployment.created",
        "endpoint.updated",
        "traffic.changed",
        "keys.regenerated",
        "endpoint.updated",
        "traffic.changed",
        "deployment.deleted",
        "endpoint.deleted",
    ]
    assert all(actor == "tester" for _, _, actor in seen)
    assert seen[1][1] == {
        "kind": "deployment",
        "name": "blue",
        "version": 1,
        "endpoint": "my-endpoint",
    }


def test_registry_survives_restart(
    start_service: ServiceStarter, registry: RunningService, examples: Path
) -> None:
    token = registry.settings.admin_token
    assert token
    with RegistryClient(registry.address, token) as client:
        create_blue(client, examples)
        client.set_traffic("my-endpoint", {"blue": 100})
        keys = client.get_credentials("my-endpoint")
    start_service.stop(registry)
    restarted = start_service("registry")
    with RegistryClient(restarted.address, token) as client:
        endpoint = client.get_online_endpoint("my-endpoint")
        assert endpoint.doc.spec.traffic == {"blue": 100}
        assert client.get_online_deployment("my-endpoint", "blue").spec.instance_count == 1
        assert client.get_credentials("my-endpoint") == keys
