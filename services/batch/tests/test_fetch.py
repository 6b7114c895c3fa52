"""http(s) inputs: the batch service fetches from public addresses only, unless listed (SSRF).

Against a real HTTP server on loopback: refused by default (and never reached),
fetched once the operator lists it, and a redirect from a listed host to an
unlisted one is refused too.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sluice.batch.fetch import FetchError, UrlPolicy, download, non_public


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("64:ff9b::a9fe:a9fe", "link-local"),  # the same through NAT64
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address under test, not a bind
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "non-public"),  # shared address space (carrier-grade NAT)
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_non_public_addresses(address: str, kind: str | None) -> None:
    found = non_public(ipaddress.ip_address(address))
    assert (found or "").startswith(kind or "") and (found is None) == (kind is None)


def test_the_allow_list_names_hosts_and_networks() -> None:
    policy = UrlPolicy.parse("files.internal, 10.20.0.0/16 [fd00::7]", own=frozenset())
    assert policy.refusal("FILES.internal.", ipaddress.ip_address("127.0.0.1")) is None
    assert policy.refusal("other", ipaddress.ip_address("10.20.3.4")) is None
    assert policy.refusal("other", ipaddress.ip_address("fd00::7")) is None
    assert "10.21.0.1, a private address" in (
        policy.refusal("other", ipaddress.ip_address("10.21.0.1")) or ""
    )
    own = UrlPolicy(own=frozenset({ipaddress.ip_address("8.8.4.4")}))
    assert "this machine's own" in (own.refusal("me", ipaddress.ip_address("8.8.4.4")) or "")
    with pytest.raises(ValueError, match="neither a host name"):
        UrlPolicy.parse("files.internal/../x")


class Server:
    """A real HTTP server on `host` serving `folder`, counting the requests it gets."""

    def __init__(self, host: str, folder: Path, redirect_to: str | None = None):
        self.requests = 0
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if redirect_to:
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                    self.end_headers()
                else:
                    super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        handler: type[BaseHTTPRequestHandler] = Handler
        self.http = ThreadingHTTPServer((host, 0), partial(handler, directory=str(folder)))
        self.url = f"http://{host}:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "rows.csv").write_text("x\n1\n")
    server = Server("127.0.0.1", tmp_path / "www")
    yield server
    server.http.shutdown()


async def test_loopback_is_refused_by_default_and_fetched_when_listed(
    served: Server, tmp_path: Path
) -> None:
    for url in (f"{served.url}/rows.csv", served.url.replace("127.0.0.1", "localhost")):
        with pytest.raises(FetchError, match=r"a loopback address: .*SLUICE_BATCH_URL_ALLOW"):
            await download(url, tmp_path / "s", UrlPolicy())
    assert served.requests == 0  # refused before connecting
    for allow in ("127.0.0.1", "127.0.0.0/8", "localhost"):
        host_url = (
            served.url.replace("127.0.0.1", "localhost") if allow == "localhost" else served.url
        )
        got = await download(
            f"{host_url}/rows.csv", tmp_path / allow.replace("/", "_"), UrlPolicy.parse(allow)
        )
        assert got.read_text() == "x\n1\n"
    assert served.requests == 3


async def test_metadata_service_is_refused_without_connecting(tmp_path: Path) -> None:
    with pytest.raises(
        FetchError, match=r"169\.254\.169\.254 is a link-local address \(cloud metadata"
    ):
        await download("http://169.254.169.254/latest/meta-data/", tmp_path, UrlPolicy())


async def test_a_redirect_to_an_unlisted_address_is_refused(served: Server, tmp_path: Path) -> None:
    """A listed host (127.0.0.2) that redirects to loopback's 127.0.0.1 gets nothing back."""
    hop = Server("127.0.0.2", tmp_path, redirect_to=f"{served.url}/rows.csv")
    try:
        with pytest.raises(FetchError, match=r"redirected to .*127\.0\.0\.1 is a loopback"):
            await download(f"{hop.url}/x.csv", tmp_path / "s", UrlPolicy.parse("127.0.0.2"))
    finally:
        hop.http.shutdown()
    assert hop.requests == 1
    assert served.requests == 0
    # Listed too, the redirect is followed.
    policy = UrlPolicy.parse("127.0.0.2 127.0.0.1")
    hop = Server("127.0.0.2", tmp_path, redirect_to=f"{served.url}/rows.csv")
    try:
        got = await download(f"{hop.url}/x.csv", tmp_path / "t", policy)
    finally:
        hop.http.shutdown()
    assert got.read_text() == "x\n1\n"
