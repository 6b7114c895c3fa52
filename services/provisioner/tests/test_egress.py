"""`egress_public_network_access: disabled` on the local backend: confine.py's network rules
(Landlock ABI 4), tried with real processes and real sockets on this kernel."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from sluice.common import confine
from sluice.common.supervisor import free_port

pytestmark = pytest.mark.integration  # starts processes

PROBE = """\
import json, socket, sys
own, other, listening = (int(a) for a in sys.argv[1:])
found = {}
for name, call in (
    ("bind own", lambda s: s.bind(("127.0.0.1", own))),
    ("bind other", lambda s: s.bind(("127.0.0.1", other))),
    ("connect", lambda s: s.connect(("127.0.0.1", listening))),
):
    with socket.socket() as s:
        try:
            call(s)
            found[name] = "ok"
        except OSError as exc:
            found[name] = type(exc).__name__
print(json.dumps(found), flush=True)
"""


def probe(
    net: dict[str, list[int]] | None, own: int, other: int, listening: int
) -> tuple[str, dict[str, str]]:
    argv = [sys.executable, "-c", PROBE, str(own), str(other), str(listening)]
    spec = {"read": None, "write": [], "argv": argv, **({"net": net} if net else {})}
    result = subprocess.run(
        confine.command(sys.executable) if net else argv,
        input=json.dumps(spec) if net else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result
    *first, report = result.stdout.splitlines()
    return "".join(first), json.loads(report)


@pytest.mark.skipif(confine.kernel_abi() < confine.NET_ABI, reason="no Landlock network rules here")
def test_a_confined_instance_binds_its_port_and_connects_only_where_allowed() -> None:
    """The instance binds its own port; binding another or connecting to a listening loopback
    service (as NATS or the registry are) is refused, unless the port is listed (the trace
    collector's). The control: unconfined, the same program does all three."""
    with socket.socket() as service:
        service.bind(("127.0.0.1", 0))
        service.listen()
        listening = service.getsockname()[1]
        own, other = free_port(), free_port()
        first, found = probe({"bind": [own], "connect": []}, own, other, listening)
        assert (
            first
            == f"confined with Landlock (ABI {confine.kernel_abi()}); TCP bind [{own}], connect []"
        )
        assert found == {
            "bind own": "ok",
            "bind other": "PermissionError",
            "connect": "PermissionError",
        }
        _, allowed = probe({"bind": [own], "connect": [listening]}, own, other, listening)
        assert allowed["connect"] == "ok"
        _, bare = probe(None, own, other, listening)
        assert bare == {"bind own": "ok", "bind other": "ok", "connect": "ok"}


def test_a_kernel_without_network_rules_refuses_with_the_ways_out() -> None:
    """Landlock before ABI 4 cannot keep a process off the network: the instance does not
    start, and the message says why and what to change."""
    exc = confine.NoNetworkRules(0, "Landlock ABI 3 has no network rules (ABI 4)")
    message = confine.refusal(exc, files=True)
    assert "egress_public_network_access: disabled" in message and "Linux 6.7" in message
    assert "SLUICE_LANDLOCK" not in message  # the file sandbox is not the problem
    other = confine.refusal(confine.LandlockUnavailable(1, "no Landlock"), files=True)
    assert "SLUICE_LANDLOCK=false" in other
