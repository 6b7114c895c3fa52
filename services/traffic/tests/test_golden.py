"""Golden JSON of the generated Envoy resources, and Envoy's own verdict on them.

Regenerate after an intended change with `SLUICE_UPDATE_GOLDEN=1 pytest services/traffic`
and review the diff like code.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2

from sluice.common.pki import PlatformPki
from sluice.common.supervisor import resolve_binary
from sluice.testing.envoy_static import resources_json, static_bootstrap
from sluice.traffic import openapi, portal
from sluice.traffic.app import SERVICES
from sluice.traffic.domain import (
    Deployment,
    Endpoint,
    Gateway,
    KeyAuth,
    Listen,
    Management,
    Share,
    TlsMaterial,
    TokenAuth,
    Upstream,
)
from sluice.traffic.jwks import PLACEHOLDER_JWKS
from sluice.traffic.tls import ensure_local_certificate, load_material
from sluice.traffic.xds.builder import SnapshotBuilder
from sluice.traffic.xds.key_hash import key_hash
from sluice.traffic.xds.resources import ROUTER_CONFIG
from sluice.traffic.xds.snapshot import EXTENSION, LISTENER, InconsistentSnapshot, Snapshot

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SLUICE_UPDATE_GOLDEN") == "1"


def world() -> list[Endpoint]:
    blue = Deployment(
        "shop",
        "blue",
        3,
        5000,
        2,
        (Upstream("127.0.0.1", 5001), Upstream("127.0.0.1", 5002)),
    )
    green = Deployment(
        "shop", "green", 1, 10000, 1, (Upstream("127.0.0.1", 5003),), "fake-gateway-secret"
    )
    shadow = Deployment("shop", "shadow", 1, 5000, 1, ())
    shop = Endpoint(
        name="shop",
        version=7,
        auth=KeyAuth(("fake-primary", "fake-secondary")),
        traffic=(Share("blue", 90), Share("green", 10)),
        mirror=Share("shadow", 20),
        deployments=(blue, green, shadow),
    )
    tokened = Endpoint(
        name="Tokened",
        version=1,
        auth=TokenAuth("sluice-endpoint/Tokened"),
        traffic=(),
        mirror=None,
        deployments=(Deployment("Tokened", "only", 1, 5000, 1, (Upstream("::1", 6000),)),),
    )
    return [shop, tokened]


def gateway(tls: TlsMaterial) -> Gateway:
    return Gateway(
        domain="sluice.localhost",
        https=Listen("127.0.0.1", 8443),
        http=Listen("127.0.0.1", 8080),
        tls=tls,
        jwks=PLACEHOLDER_JWKS,
        access_log=True,
    )


def snapshot(tls: TlsMaterial) -> Snapshot:
    snap = SnapshotBuilder().build(gateway(tls), world())
    snap.check()
    return snap


def test_resources_match_the_golden_file() -> None:
    snap = snapshot(TlsMaterial(b"-----FAKE CERTIFICATE-----", b"-----FAKE KEY-----"))
    got = {"versions": dict(snap.versions), "resources": resources_json(snap)}
    path = GOLDEN / "snapshot.json"
    if UPDATE:
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    expected = json.loads(path.read_text())
    assert got["resources"] == expected["resources"], "regenerate with SLUICE_UPDATE_GOLDEN=1"
    assert got["versions"] == expected["versions"]


@pytest.mark.integration  # starts a process
def test_envoy_accepts_the_configuration(tmp_path: Path) -> None:
    envoy = resolve_binary("envoy")
    assert envoy, "envoy is installed by `make setup` (the 'platform' dependency group)"
    cert, key = ensure_local_certificate(tmp_path / "tls", "sluice.localhost")
    config = tmp_path / "static.json"
    envoy_identity = PlatformPki(tmp_path / "pki").client("sluice-gateway")
    bootstrap = static_bootstrap(snapshot(load_material(cert, key)), envoy=envoy_identity)
    config.write_text(json.dumps(bootstrap))
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config), "--log-level", "critical"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_versions_are_content_hashes() -> None:
    tls = TlsMaterial(b"c", b"k")
    a = SnapshotBuilder().build(gateway(tls), world())
    b = SnapshotBuilder().build(gateway(tls), list(reversed(world())))
    assert a.versions == b.versions and a.id == b.id
    moved = world()
    moved[0] = Endpoint(**{**moved[0].__dict__, "traffic": (Share("blue", 80), Share("green", 20))})
    c = SnapshotBuilder().build(gateway(tls), moved)
    changed = {t for t in a.versions if a.versions[t] != c.versions[t]}
    assert changed == {"type.googleapis.com/envoy.config.route.v3.RouteConfiguration"}


def test_plain_http_can_be_turned_off() -> None:
    tls = TlsMaterial(b"c", b"k")
    on = SnapshotBuilder().build(gateway(tls), world())
    off_gateway = Gateway(**{**gateway(tls).__dict__, "http": None})
    off = SnapshotBuilder().build(off_gateway, world())
    listeners = "type.googleapis.com/envoy.config.listener.v3.Listener"
    assert sorted(on.resources[listeners]) == ["sluice_http", "sluice_https"]
    assert sorted(off.resources[listeners]) == ["sluice_https"]


def upstream_logs(snap: Snapshot) -> int:
    """How many upstream logs the snapshot's router has (the mirror log: 0 or 1)."""
    config = extension_pb2.TypedExtensionConfig()
    snap.resources[EXTENSION][ROUTER_CONFIG].Unpack(config)
    router = router_pb2.Router()
    config.typed_config.Unpack(router)
    return len(router.upstream_log)


def test_the_router_logs_mirrored_copies_only_while_an_endpoint_mirrors() -> None:
    """Adding or removing the mirror log changes the router's own resource (ECDS), which
    Envoy applies to the next request, and nothing else: the listeners stay as they are."""
    tls = TlsMaterial(b"c", b"k")
    unmirrored = [Endpoint(**{**world()[0].__dict__, "mirror": None}), world()[1]]
    mirroring = SnapshotBuilder().build(gateway(tls), world())
    plain = SnapshotBuilder().build(gateway(tls), unmirrored)
    plain.check()

    assert (upstream_logs(mirroring), upstream_logs(plain)) == (1, 0)
    assert mirroring.versions[LISTENER] == plain.versions[LISTENER]
    unlogged = Gateway(**{**gateway(tls).__dict__, "access_log": False})
    assert upstream_logs(SnapshotBuilder().build(unlogged, world())) == 0
    # A listener naming a filter configuration the snapshot lacks is refused.
    broken = Snapshot.build(
        {t: list(items.items()) for t, items in plain.resources.items() if t != EXTENSION},
        plain.route_clusters,
    )
    with pytest.raises(InconsistentSnapshot, match="names unknown filters"):
        broken.check()


def test_keys_never_appear_in_a_repr() -> None:
    assert "fake-primary" not in repr(world()[0])
    assert "fake-gateway-secret" not in repr(world()[0])


def test_keys_reach_envoy_only_as_hashes() -> None:
    """What goes over xDS (and into Envoy's /config_dump) has the keys' hashes, not them."""
    dumped = json.dumps(resources_json(snapshot(TlsMaterial(b"c", b"k"))))
    for key in ("fake-primary", "fake-secondary"):
        assert key not in dumped
        assert key_hash(key) in dumped


@pytest.mark.integration  # starts a process
@pytest.mark.parametrize(("host", "tls"), [("127.0.0.1", False), ("0.0.0.0", True)])  # noqa: S104
def test_envoy_accepts_the_management_listener(tmp_path: Path, host: str, tls: bool) -> None:
    """The transcoder with the real descriptor set, the portal's files and the OpenAPI doc;
    plain HTTP on loopback, TLS with the gateway's certificate anywhere else."""
    envoy = resolve_binary("envoy")
    assert envoy
    data = openapi.descriptor_set()
    managed = Gateway(
        **{
            **gateway(TlsMaterial(b"c", b"k")).__dict__,
            "management": Management(
                listen=Listen(host, 8090),
                services=tuple((s, "127.0.0.1:50051") for s in SERVICES),
                descriptor_set=data,
                openapi=json.dumps(openapi.document(data)).encode(),
                files=portal.files(),
                gateway=Listen("127.0.0.1", 8080),
            ),
        }
    )
    cert, key = ensure_local_certificate(tmp_path / "tls", "sluice.localhost")
    managed = Gateway(**{**managed.__dict__, "tls": load_material(cert, key)})
    snap = SnapshotBuilder().build(managed, world())
    snap.check()
    config = tmp_path / "static.json"
    envoy_identity = PlatformPki(tmp_path / "pki").client("sluice-gateway")
    config.write_text(json.dumps(static_bootstrap(snap, envoy=envoy_identity)))
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config), "--log-level", "critical"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    listeners = "type.googleapis.com/envoy.config.listener.v3.Listener"
    assert "sluice_management" in snap.resources[listeners]
    listener = listener_pb2.Listener()
    snap.resources[listeners]["sluice_management"].Unpack(listener)
    socket = listener.filter_chains[0].transport_socket
    assert (socket.name == "envoy.transport_sockets.tls") is tls


def test_the_mirror_log_outlives_the_mirror_by_the_copies_longest_timeout() -> None:
    """Copies sent just before a mirror is removed are still answered for up to the mirrored
    deployment's request timeout: the router keeps logging them until then, and a build after
    that (the controller's periodic resync) drops the log."""
    tls = TlsMaterial(b"c", b"k")
    now = [1000.0]
    builder = SnapshotBuilder(clock=lambda: now[0])
    mirroring = world()
    assert mirroring[0].mirror is not None
    target = mirroring[0].deployment(mirroring[0].mirror.deployment)
    assert target is not None
    timeout_s = target.request_timeout_ms / 1000
    unmirrored = [Endpoint(**{**mirroring[0].__dict__, "mirror": None}), mirroring[1]]

    assert upstream_logs(builder.build(gateway(tls), mirroring)) == 1
    now[0] += timeout_s  # the mirror removed: its last copies may still be answered
    kept = builder.build(gateway(tls), unmirrored)
    assert upstream_logs(kept) == 1
    kept.check()
    now[0] += 1.5  # past the timeout and the margin
    assert upstream_logs(builder.build(gateway(tls), unmirrored)) == 0
    # The control: a builder that never saw the mirror has no log.
    assert upstream_logs(SnapshotBuilder(clock=lambda: now[0]).build(gateway(tls), unmirrored)) == 0
