"""Attacks 2, 4 and 5: around the gateway, learning names without a key, slow and huge bodies."""

from __future__ import annotations

import http.client
import socket
import threading
import time

import pytest

from sluice.common.gateway_auth import HEADER
from sluice.sdk.invoke import DEPLOYMENT_HEADER, send

from .conftest import Attacked, wait_for

pytestmark = pytest.mark.integration
SLOW_SENDERS = 10
HUGE_SENDERS = 4
HUGE_BYTES = 20 * 1024 * 1024
WINDOW_S = 8.0


def pinned(attacked: Attacked, deployment: str, key: str | None, body: bytes = b"{}") -> tuple:
    headers = [(DEPLOYMENT_HEADER, deployment)]
    if key is not None:
        headers.append(("Authorization", f"Bearer {key}"))
    return send(attacked.target, host=attacked.host, path="/score", body=body, headers=headers)


def test_a_direct_call_to_an_instance_gets_403(attacked: Attacked) -> None:
    (instance,) = attacked.victim.instances
    host, port = instance.address.rsplit(":", 1)
    for headers in ({}, {HEADER: "guessed"}, {"Authorization": f"Bearer {attacked.key}"}):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", "/score", body=b"{}", headers=headers)
        response = conn.getresponse()
        assert response.status == 403, headers
        assert b"only the gateway" in response.read()
        conn.close()
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/ready")  # probes stay open: they tell nothing but readiness
    assert conn.getresponse().status == 200
    conn.close()
    # Through the gateway, which adds the deployment's own secret, the same call succeeds.
    _, headers, _ = wait_for(
        lambda: (r := pinned(attacked, "victim", attacked.key))[0] == 200 and r,
        "the victim to answer through the gateway",
    )
    assert dict(headers)[DEPLOYMENT_HEADER] == "victim"


def test_replies_without_credentials_name_no_deployment(attacked: Attacked) -> None:
    for deployment, key in (("victim", None), ("victim", "wrong"), ("nonexistent", None)):
        status, headers, body = pinned(attacked, deployment, key)
        assert status == 401
        names = {name.lower() for name, _ in headers}
        assert DEPLOYMENT_HEADER not in names, headers
        assert b"victim" not in body and b"attacker" not in body
    status, headers, _ = send(
        attacked.target, host=attacked.host, path="/score", body=b"{}", headers=[]
    )
    assert status == 401 and DEPLOYMENT_HEADER not in {n.lower() for n, _ in headers}


def _slow_sender(attacked: Attacked, stop: threading.Event) -> None:
    """Announces 100 kB and sends one byte a second, with a valid key."""
    with socket.create_connection(
        (attacked.target.connect_host, attacked.state.envoy_http_port)
    ) as s:
        s.sendall(
            (
                f"POST /score HTTP/1.1\r\nHost: {attacked.host}\r\n"
                f"Authorization: Bearer {attacked.key}\r\n{DEPLOYMENT_HEADER}: victim\r\n"
                "Content-Length: 100000\r\n\r\n"
            ).encode()
        )
        while not stop.wait(1.0):
            try:
                s.sendall(b"{")
            except OSError:
                return


def _huge_sender(attacked: Attacked, stop: threading.Event, refused: list[int]) -> None:
    body = b"[" + b"1," * (HUGE_BYTES // 2) + b"1]"
    while not stop.is_set():
        try:
            status, _, _ = pinned(attacked, "victim", attacked.key, body)
        except OSError:  # the gateway may close the connection while the body is still sent
            status = 413
        refused.append(status)


def test_slow_and_huge_bodies_leave_other_clients_served(attacked: Attacked) -> None:
    wait_for(lambda: pinned(attacked, "victim", attacked.key)[0] == 200, "the victim")
    stop = threading.Event()
    refused: list[int] = []
    attackers = [
        threading.Thread(target=_slow_sender, args=(attacked, stop), daemon=True)
        for _ in range(SLOW_SENDERS)
    ] + [
        threading.Thread(target=_huge_sender, args=(attacked, stop, refused), daemon=True)
        for _ in range(HUGE_SENDERS)
    ]
    for thread in attackers:
        thread.start()
    outcomes: list[int] = []
    deadline = time.monotonic() + WINDOW_S
    try:
        while time.monotonic() < deadline:
            try:
                outcomes.append(pinned(attacked, "victim", attacked.key)[0])
            except OSError:
                outcomes.append(0)
    finally:
        stop.set()
        for thread in attackers:
            thread.join(timeout=30)
    ok = outcomes.count(200) / len(outcomes)
    assert len(outcomes) >= 20, outcomes
    assert ok >= 0.99, f"{ok:.1%} of {len(outcomes)} succeeded: {sorted(set(outcomes))}"
    assert refused and set(refused) == {413}, sorted(set(refused))
