"""What the gateway header check (issue 11) adds to a request through Envoy.

Only the gateway reaches instances: Envoy adds `x-sluice-gateway` with an upstream
`header_mutation` filter of the deployment's cluster, and the inference server
compares it (`hmac.compare_digest`). Same run, same Envoy, two endpoints routed the
way the traffic controller routes them (its snapshot builder, loaded as a static
configuration), each on an inference server of its own with the example model:

- `plain`: no gateway secret (no filter, no check): the baseline;
- `guarded`: a secret (Envoy adds the header, the server checks it).

wrk, one connection (closed loop), interleaved plain/guarded rounds (BENCH_ROUNDS,
default 8, of SECONDS each); the figures are median (min-max) over rounds of each
round's p50, and of each round's difference guarded - plain.
Run with `uv run python bench/run.py gateway_header`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from sluice.common.gateway_auth import ENV
from sluice.common.health import HttpCheck
from sluice.common.supervisor import ProcessSpec, Supervisor, free_port
from sluice.testing.envoy_static import static_bootstrap
from sluice.traffic.domain import (
    Deployment,
    Endpoint,
    Gateway,
    KeyAuth,
    Listen,
    Share,
    Upstream,
)
from sluice.traffic.jwks import PLACEHOLDER_JWKS
from sluice.traffic.tls import ensure_local_certificate, load_material
from sluice.traffic.xds.builder import SnapshotBuilder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared import bench_module  # bench/shared.py
from stats import interleave, rounds, spread  # bench/stats.py

ROUNDS = rounds(8)
SECONDS = 4
KEY = "bench-primary-key"
SECRET = "bench-gateway-secret-0123456789abcdef"  # noqa: S105 - a throwaway platform's


def endpoint(name: str, port: int, secret: str) -> Endpoint:
    deployment = Deployment(name, "blue", 1, 5000, 32, (Upstream("127.0.0.1", port),), secret)
    return Endpoint(
        name=name,
        version=1,
        auth=KeyAuth((KEY, "bench-secondary")),
        traffic=(Share("blue", 100),),
        mirror=None,
        deployments=(deployment,),
    )


def main() -> None:
    traffic = bench_module("traffic")
    if not (traffic.MODEL / "model").exists():
        import subprocess

        subprocess.run([sys.executable, str(traffic.ROOT / "examples/train_models.py")], check=True)
    with tempfile.TemporaryDirectory(prefix="sluice-bench-header-") as tmp:
        root = Path(tmp)
        sup = Supervisor(root / "logs")
        try:
            ports = {"plain": free_port(), "guarded": free_port()}
            for name, port in ports.items():
                env = {**os.environ, **({ENV: SECRET} if name == "guarded" else {})}
                sup.start(
                    ProcessSpec(
                        name=f"inference-{name}",
                        argv=traffic.inference_argv(port),
                        health=HttpCheck(f"http://127.0.0.1:{port}/ready"),
                        env=env,
                        ports=[port],
                    )
                )
            http_port = free_port()
            cert, key = ensure_local_certificate(root / "tls", traffic.DOMAIN)
            gateway = Gateway(
                domain=traffic.DOMAIN,
                https=Listen("127.0.0.1", free_port()),
                http=Listen("127.0.0.1", http_port),
                tls=load_material(cert, key),
                jwks=PLACEHOLDER_JWKS,
            )
            snapshot = SnapshotBuilder().build(
                gateway,
                [
                    endpoint("plain", ports["plain"], ""),
                    endpoint("guarded", ports["guarded"], SECRET),
                ],
            )
            snapshot.check()
            admin = free_port()
            config = root / "envoy.json"
            config.write_text(json.dumps(static_bootstrap(snapshot, admin_port=admin)))
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
            headers = {
                name: {
                    "Host": f"{name}.{traffic.DOMAIN}",
                    "Authorization": f"Bearer {KEY}",
                    "Content-Type": "application/json",
                }
                for name in ports
            }
            for name in ports:  # warm up; a 403 (header missing) would fail wrk here
                traffic.wrk(url, 4, 2, headers[name])
            p50 = interleave(
                ROUNDS,
                {n: lambda n=n: traffic.wrk(url, 1, SECONDS, headers[n])["p50"] for n in ports},
            )
            added = [g - p for g, p in zip(p50["guarded"], p50["plain"], strict=True)]
            print(
                f"| through Envoy, c=1, p50 (ms) | plain {spread(p50['plain']).show('{:.3f}')} "
                f"| guarded {spread(p50['guarded']).show('{:.3f}')} "
                f"| added {spread(added).show('{:+.3f}')} ms |"
            )
        finally:
            sup.stop_all()


if __name__ == "__main__":
    main()
