"""What checking endpoint keys as hashes costs in Envoy (keys never travel over xDS).

The traffic controller sends Envoy SHA-256 hashes of the keys: a Lua filter of its
own computes the hash of each request's `authorization` header (pure Lua on LuaJIT's
`bit` operations: Envoy 1.40 has no digest of its own) and RBAC compares hashes
(services/traffic/.../xds/key_hash.py). Same Envoy, same run, three endpoints built by
the controller's snapshot builder:

- `open`: no key check at all (RBAC and the hash filter off on the route);
- `keys`: RBAC compares the key itself, as before key_hash (hash filter off);
- `hashed`: what the controller builds: the Lua hash, then RBAC on the hash.

The routes answer directly from Envoy (no upstream), so the figures are the
filters' cost alone. wrk, one connection, interleaved rounds (BENCH_ROUNDS, default
10); the figures are median (min-max) over rounds of each round's p50 and of each
round's differences. Run with
`uv run python bench/run.py gateway_key_hash`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from sluice.common.health import HttpCheck
from sluice.common.supervisor import ProcessSpec, Supervisor, free_port
from sluice.testing.envoy_static import static_bootstrap
from sluice.traffic.domain import Deployment, Endpoint, Gateway, KeyAuth, Listen, Share, Upstream
from sluice.traffic.jwks import PLACEHOLDER_JWKS
from sluice.traffic.tls import ensure_local_certificate, load_material
from sluice.traffic.xds import key_hash
from sluice.traffic.xds.builder import SnapshotBuilder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared import bench_module  # bench/shared.py
from stats import interleave, rounds, spread  # bench/stats.py

ROUNDS = rounds(10)
SECONDS = 3
KEY = "k" * 43  # the length of the platform's keys (secrets.token_urlsafe(32))
SECOND = "s" * 43
VARIANTS = ("open", "keys", "hashed")


def endpoint(name: str) -> Endpoint:
    deployment = Deployment(name, "blue", 1, 5000, 32, (Upstream("127.0.0.1", 9),), "")
    return Endpoint(
        name=name,
        version=1,
        auth=KeyAuth((KEY, SECOND)),
        traffic=(Share("blue", 100),),
        mirror=None,
        deployments=(deployment,),
    )


def rewrite(bootstrap: dict[str, Any]) -> None:
    """Direct 200s on the three endpoints' routes; `open` unchecked; `keys` compares the
    keys themselves (hash filter off); `hashed` as the controller built it."""
    lua_off = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
        "disabled": True,
    }
    keys = {key_hash.key_hash(k): f"Bearer {k}" for k in (KEY, SECOND)}
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filterChains"]:
            for f in chain["filters"]:
                hcm = f["typedConfig"]
                for host in hcm.get("routeConfig", {}).get("virtualHosts", []):
                    name = host["name"].removeprefix("endpoint:")
                    if name not in VARIANTS:
                        continue
                    for route in host["routes"]:
                        per = route.setdefault("typedPerFilterConfig", {})
                        route.pop("route", None)
                        route["directResponse"] = {"status": 200, "body": {"inlineString": "ok"}}
                        if name == "hashed":
                            continue
                        per[key_hash.FILTER] = lua_off
                        rbac = per["envoy.filters.http.rbac"]
                        if name == "open":
                            per["envoy.filters.http.rbac"] = {"@type": rbac["@type"]}
                            continue
                        for principal in rbac["rbac"]["rules"]["policies"]["endpoint"][
                            "principals"
                        ]:
                            header = principal["header"]
                            header["name"] = "authorization"
                            header["stringMatch"]["exact"] = keys[header["stringMatch"]["exact"]]


def status_of(url: str, host: str, key: str) -> int:
    headers = {"Host": host, "Authorization": f"Bearer {key}"}
    return httpx.post(url, content=b"{}", headers=headers, timeout=10).status_code


def main() -> None:
    traffic = bench_module("traffic")
    with tempfile.TemporaryDirectory(prefix="sluice-bench-keyhash-") as tmp:
        root = Path(tmp)
        sup = Supervisor(root / "logs")
        try:
            http_port = free_port()
            cert, key = ensure_local_certificate(root / "tls", traffic.DOMAIN)
            gateway = Gateway(
                domain=traffic.DOMAIN,
                https=Listen("127.0.0.1", free_port()),
                http=Listen("127.0.0.1", http_port),
                tls=load_material(cert, key),
                jwks=PLACEHOLDER_JWKS,
            )
            snapshot = SnapshotBuilder().build(gateway, [endpoint(n) for n in VARIANTS])
            bootstrap = static_bootstrap(snapshot, admin_port=(admin := free_port()))
            rewrite(bootstrap)
            config = root / "envoy.json"
            config.write_text(json.dumps(bootstrap))
            sup.start(
                ProcessSpec(
                    name="envoy",
                    argv=[
                        *("envoy", "-c", str(config), "--concurrency", "1"),
                        *("--disable-hot-restart", "--log-level", "warning"),
                    ],
                    health=HttpCheck(f"http://127.0.0.1:{admin}/ready"),
                    ports=[admin, http_port],
                )
            )
            url = f"http://127.0.0.1:{http_port}/score"
            hosts = {name: f"{name}.{traffic.DOMAIN}" for name in VARIANTS}
            # The Lua digest equals Python's: the right keys pass, a wrong one does not.
            for name in ("keys", "hashed"):
                assert status_of(url, hosts[name], KEY) == 200, name
                assert status_of(url, hosts[name], SECOND) == 200, name
                assert status_of(url, hosts[name], "w" * 43) == 401, name
            assert status_of(url, hosts["open"], "w" * 43) == 200
            headers = {
                name: {"Host": hosts[name], "Authorization": f"Bearer {KEY}"} for name in VARIANTS
            }
            for name in VARIANTS:  # warm up
                traffic.wrk(url, 1, 2, headers[name])
            p50 = interleave(
                ROUNDS,
                {n: lambda n=n: traffic.wrk(url, 1, SECONDS, headers[n])["p50"] for n in VARIANTS},
            )
            print("| Envoy alone, c=1, p50 (ms) | median (min-max) over rounds |")
            print("|---|---:|")
            for name in VARIANTS:
                print(f"| {name} | {spread(p50[name]).show('{:.3f}')} |")
            for figure, base in (("keys", "open"), ("hashed", "keys")):
                added = [f - b for f, b in zip(p50[figure], p50[base], strict=True)]
                print(f"| {figure} - {base}, per round | {spread(added).show('{:+.3f}')} |")
        finally:
            sup.stop_all()


if __name__ == "__main__":
    main()
