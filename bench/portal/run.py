"""The management REST API and the portal, on the whole platform as `sluice up` runs it.

1. What the gRPC-JSON transcoder adds: the same call (GetOnlineEndpoint) three ways, in
   interleaved rounds (BENCH_ROUNDS, default 10) of ROUND sequential calls each so that
   machine noise hits all three alike; median (min-max) over rounds of each round's p50,
   differences taken round by round: gRPC straight to the registry (what the CLI does,
   the baseline), gRPC through Envoy's management listener, and REST
   (`GET /onlineEndpoints/{name}`, one keep-alive HTTP/1.1 connection) through the same
   listener. Target: REST p50 - gRPC p50 <= 1 ms.
2. (unless SLUICE_BENCH_PORTAL_PAGE=0) The endpoints page with ENDPOINTS endpoints in
   headless Chromium (Debian's chromium over Playwright): from navigation to the table
   holding every row (the page is interactive then: it has no other work) - target
   <= 1 s - against the same page with 1 endpoint (measured before the other endpoints
   exist: not interleaved), median (min-max) of PAGE_LOADS loads each.
"""

from __future__ import annotations

import http.client
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from sluice.common.platform import LocalPlatform
from sluice.common.settings import EnvoySettings, ServicePorts, Settings
from sluice.common.supervisor import free_port
from sluice.testing.rest import rest_of
from sluice.v1 import workspace_pb2, workspace_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stats import interleave, ratios, rounds, spread  # bench/stats.py

ROUNDS = rounds(10)
ROUND = 200
ENDPOINTS = 1000
PAGE_LOADS = 5


def transcoder(registry: str, management: str, token: str, name: str) -> None:
    metadata = (("authorization", f"Bearer {token}"),)
    # The same call each way: Workspace.GetOnlineEndpoint is what GET /onlineEndpoints/{name}
    # transcodes to.
    request = workspace_pb2.GetResourceRequest(name=name)
    direct = workspace_pb2_grpc.WorkspaceStub(grpc.insecure_channel(registry))
    proxied = workspace_pb2_grpc.WorkspaceStub(grpc.insecure_channel(management))
    # The stdlib's client: little Python per call, as grpc's C core has little.
    host, _, port = management.partition(":")
    conn = http.client.HTTPConnection(host, int(port))
    headers = {"authorization": metadata[0][1]}

    def rest() -> None:
        conn.request("GET", f"/onlineEndpoints/{name}", headers=headers)
        answer = conn.getresponse()
        body = answer.read()
        assert answer.status == 200, body

    calls: dict[str, Callable[[], object]] = {
        "gRPC -> registry": lambda: direct.GetOnlineEndpoint(request, metadata=metadata),
        "gRPC -> Envoy -> registry": lambda: proxied.GetOnlineEndpoint(request, metadata=metadata),
        "REST -> Envoy (transcoder) -> registry": rest,
    }
    for call in calls.values():  # warm connections
        for _ in range(20):
            call()

    def p50(call: Callable[[], object]) -> float:
        """One round: the median of ROUND sequential calls, ms."""
        times = []
        for _ in range(ROUND):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    p50s = interleave(ROUNDS, {label: lambda c=call: p50(c) for label, call in calls.items()})
    direct_p50, proxied_p50, rest_p50 = p50s.values()
    print(f"{ROUNDS} interleaved rounds of {ROUND} calls each; each round's p50, median (min-max)")
    print("| path | p50 ms | p50 - gRPC ms, per round | / gRPC, per round |")
    print("|---|---:|---:|---:|")
    for label, values in p50s.items():
        added = [v - d for v, d in zip(values, direct_p50, strict=True)]
        print(
            f"| {label} | {spread(values).show('{:.3f}')} | {spread(added).show('{:+.3f}')} "
            f"| {spread(ratios(values, direct_p50)).show()} |"
        )
    own = [r - p for r, p in zip(rest_p50, proxied_p50, strict=True)]
    print(
        "REST / gRPC through the same listener (the transcoder's own cost), per round: "
        f"{spread(ratios(rest_p50, proxied_p50)).show()}, {spread(own).show('{:+.3f}')} ms p50"
    )


def portal(management: str, token: str, create: Callable[[int], None]) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        print("portal: chromium is not installed (apt-get install -y chromium); skipped")
        return
    from playwright.sync_api import sync_playwright

    def load(page: object, expected: int) -> float:
        page.goto("about:blank")  # type: ignore[attr-defined]
        started = time.perf_counter()
        page.goto(f"http://{management}/portal/#/endpoints")  # type: ignore[attr-defined]
        page.wait_for_function(  # type: ignore[attr-defined]
            f"document.querySelectorAll('#endpoints tbody tr').length === {expected}"
        )
        return (time.perf_counter() - started) * 1000

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.add_init_script(f"sessionStorage.setItem('sluice-admin-token', {token!r})")
        create(1)
        small = [load(page, 1) for _ in range(PAGE_LOADS)]
        create(ENDPOINTS)
        large = [load(page, ENDPOINTS) for _ in range(PAGE_LOADS)]
        browser.close()
    print(f"endpoints page, navigation -> every row in the table, ms ({PAGE_LOADS} loads)")
    print(f"  1 endpoint:     {spread(small).show('{:.0f}')}")
    print(f"  {ENDPOINTS} endpoints: {spread(large).show('{:.0f}')}  (target <= 1000 ms)")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sluice-bench-portal-") as tmp:
        state = Path(tmp)
        state.chmod(0o755)  # the deployments' own users traverse it
        settings = Settings(
            state_dir=state,
            envoy=EnvoySettings(
                http_port=free_port(), https_port=free_port(), management_port=free_port()
            ),
            ports=ServicePorts(registry=free_port()),
        )
        platform = LocalPlatform(settings)
        up, _ = platform.up(watchdog=False)
        try:
            rest = rest_of(up)
            assert up.registry_address and up.management_url
            management = up.management_url.removeprefix("http://")
            made = 0

            def create(count: int) -> None:
                nonlocal made
                for i in range(made, count):
                    status, body = rest.call(
                        "PUT", f"/onlineEndpoints/b{i:04d}", {"name": f"b{i:04d}"}
                    )
                    assert status == 201, body
                made = max(made, count)

            create(1)
            transcoder(up.registry_address, management, rest.admin_token, "b0000")
            if os.environ.get("SLUICE_BENCH_PORTAL_PAGE", "1") != "0":
                portal(management, rest.admin_token, create)
        finally:
            platform.down()


if __name__ == "__main__":
    main()
