"""Envoy's own replies over HTTP/2 and HTTP/1.1: the status arrives intact, the connection
survives, and nothing names a deployment before the caller proved who it is."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import Callable

import httpx
import pytest

from sluice.testing.traffic import Traffic, Upstream, World, eventually

KEY = "primary-key-1"
BODY = b'{"data": [[1, 2, 3]]}' * 2000  # larger than one TCP segment: the reply races the body


@pytest.mark.parametrize("http2", [True, False], ids=["h2", "http1.1"])
async def test_local_replies_over_both_protocols(
    traffic: Traffic,
    world: World,
    upstreams: Callable[[str], Upstream],
    http2: bool,
) -> None:
    blue = upstreams("blue")
    await world.deployment("proto", "blue", [blue.address])
    await world.deployment("proto", "empty", [])
    await world.endpoint("proto", traffic={"blue": 100})
    eventually(lambda: traffic.score("proto", KEY)[0], lambda s: s == 200)
    url = f"https://localhost:{traffic.https.port}/endpoints/proto/score"
    ca = ssl.create_default_context(cafile=traffic.state_dir / "tls" / "ca.crt")
    with httpx.Client(http2=http2, http1=not http2, verify=ca, timeout=20) as client:

        def post(*headers: tuple[str, str]) -> httpx.Response:
            return client.post(url, content=BODY, headers=list(headers))

        key = ("Authorization", f"Bearer {KEY}")
        cases = [
            (post(key, ("azureml-model-deployment", "red")), 404, "no deployment of the name"),
            (post(("azureml-model-deployment", "blue")), 401, "missing or invalid credentials"),
            (post(), 401, "missing or invalid credentials"),
            (post(key, ("azureml-model-deployment", "empty")), 503, "no ready instance"),
        ]
        for reply, status, message in cases:
            assert reply.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert reply.status_code == status, reply.text
            assert message in reply.json()["message"]
            assert "connection" not in reply.headers  # the connection stays open
            assert "azureml-model-deployment" not in reply.headers
        served = post(key)
        assert served.status_code == 200
        assert served.headers["azureml-model-deployment"] == "blue"
        pinned = post(key, ("azureml-model-deployment", "blue"))
        assert pinned.headers["azureml-model-deployment"] == "blue"


CURL = shutil.which("curl")


@pytest.mark.skipif(CURL is None, reason="needs the curl command")
async def test_curl_gets_the_404_for_an_unknown_pin_over_h2(
    traffic: Traffic, world: World, upstreams: Callable[[str], Upstream]
) -> None:
    """Azure's docs score with curl, whose default over TLS is HTTP/2 (7.88 reported a reply
    sent before the whole request was read as "stream error in the HTTP/2 framing layer")."""
    blue = upstreams("blue")
    await world.deployment("curl", "blue", [blue.address])
    await world.endpoint("curl", traffic={"blue": 100})
    eventually(lambda: traffic.score("curl", KEY)[0], lambda s: s == 200)
    curl = await asyncio.create_subprocess_exec(
        str(CURL), "-sS", "--http2", "--cacert", str(traffic.state_dir / "tls" / "ca.crt"),
        "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
        "-H", f"Authorization: Bearer {KEY}", "-H", "azureml-model-deployment: red",
        "--data-binary", BODY.decode(),
        f"https://localhost:{traffic.https.port}/endpoints/curl/score",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(curl.communicate(), 30)
    assert (curl.returncode, out.decode()) == (0, "2 404"), err.decode()
