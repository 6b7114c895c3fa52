"""Downloading a job's `http(s)://` input without letting a caller aim the platform at itself.

The batch service fetches remote inputs itself, from inside the platform's
network, and a job's output is the answer read back: unchecked, anyone allowed
to invoke a job could have it fetch `http://127.0.0.1:<a service's port>`, the
cloud's metadata service (169.254.169.254: the machine's credentials) or a pod
of the cluster's private network (server-side request forgery).

So every connection, the first and each redirect's, goes through `GuardedBackend`:
the host name is resolved once, *every* address it resolves to must be public
(not loopback, link-local, private, shared, multicast, reserved, nor one of this
machine's own), and the connection goes to the address that was checked, never
to a second resolution, which could answer differently (DNS rebinding). An
operator lists the hosts and networks jobs may fetch from anyway in
SLUICE_BATCH_URL_ALLOW, e.g. `files.internal,10.20.0.0/16`: a listed host name
is trusted whatever it resolves to; a listed network allows the addresses in it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

import httpcore

MAX_DOWNLOAD_BYTES = 1 << 30  # 1 GiB per downloaded file
DOWNLOAD_TIMEOUT_S = 60.0  # per connect, read or write, as httpx's timeout
MAX_REDIRECTS = 5
REDIRECTS = {301, 302, 303, 307, 308}
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv4 addresses reached through a NAT64 gateway
HOST_NAME = re.compile(
    r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?$", re.I
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(ValueError):
    """The input cannot be downloaded; the message says why."""


class Refused(FetchError):
    """The URL's host is one the policy does not let the platform connect to."""


def _embedded_ipv4(address: Address) -> Address:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), else itself:
    `::ffff:127.0.0.1` is loopback too."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def non_public(address: Address) -> str | None:
    """What kind of non-public address `address` is (for the error), or None if public."""
    address = _embedded_ipv4(address)
    kinds = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("unspecified", address.is_unspecified),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    )
    for kind, matches in kinds:
        if matches:
            return kind
    return None if address.is_global else "non-public"


def own_addresses(hosts: Iterable[str] = ()) -> frozenset[Address]:
    """This machine's addresses as its host name resolves (and `hosts`, e.g. SLUICE_HOST):
    a public address of the platform's own machine reaches its internal ports too."""
    found: set[Address] = set()
    for host in (socket.gethostname(), *hosts):
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            continue
        found.update(ipaddress.ip_address(info[4][0]) for info in infos)
    return frozenset(found)


@dataclass(frozen=True)
class UrlPolicy:
    """Which hosts a job's input may be fetched from: public addresses, and what is listed."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()
    own: frozenset[Address] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, allow: str, own: frozenset[Address] = frozenset()) -> UrlPolicy:
        """`allow`: comma- or space-separated host names, addresses and CIDR networks."""
        hosts: set[str] = set()
        networks: list[Network] = []
        for entry in allow.replace(",", " ").split():
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if not HOST_NAME.match(entry):
                    raise ValueError(
                        f"SLUICE_BATCH_URL_ALLOW: {entry!r} is neither a host name, an address "
                        "nor a network (CIDR)"
                    ) from None
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks), own)

    def refusal(self, host: str, address: Address) -> str | None:
        """Why a connection to `host` at `address` is refused, or None."""
        if host.lower().rstrip(".") in self.hosts or any(address in n for n in self.networks):
            return None
        kind = non_public(address)
        if kind is None and address in self.own:
            kind = "this machine's own"
        if kind is None:
            return None
        what = (
            f"{address} is"
            if host.strip("[]") == str(address)
            else f"{host} resolves to {address},"
        )
        note = " (cloud metadata services answer there)" if kind == "link-local" else ""
        return (
            f"{what} a {kind} address{note}: the batch service fetches inputs only from "
            "public addresses unless an operator lists the host or its network in "
            "SLUICE_BATCH_URL_ALLOW"
        )


PUBLIC_ONLY = UrlPolicy()  # nothing listed: public addresses only


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses `policy` allows, and to exactly the address it checked."""

    def __init__(self, policy: UrlPolicy):
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise httpcore.ConnectError(f"{host} cannot be resolved: {exc.strerror}") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(i[4][0]) for i in infos))
        for address in addresses:  # all of them: a name may answer a public and a private one
            reason = self.policy.refusal(host, address)
            if reason:
                raise Refused(reason)
        error: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host} has no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise Refused("inputs are fetched over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def download(
    url: str, scratch: Path, policy: UrlPolicy, *, limit: int = MAX_DOWNLOAD_BYTES
) -> Path:
    """Fetch one http(s) file into `scratch`, following at most MAX_REDIRECTS redirects
    (each checked like the first URL) and refusing more than `limit` bytes."""
    scratch.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - one small local mkdir
    async with _answer(url, policy) as reply:
        return await _save(reply, url, scratch, limit)


@dataclass(frozen=True)
class Answer:
    """An answer read whole: its HTTP status, Content-Type and body."""

    status: int
    content_type: str
    body: bytes


async def read(
    url: str,
    policy: UrlPolicy,
    *,
    headers: Sequence[tuple[str, str]] = (),
    limit: int,
    what: str,
) -> Answer:
    """GET `url` as `download` does (same checks, same redirects), into memory: for a small
    answer such as a listing, whatever its status; more than `limit` bytes is refused.
    Errors name `what` (e.g. the input the request is made for) rather than `url`."""
    async with _answer(url, policy, headers, what) as reply:
        body = bytearray()
        async for chunk in reply.aiter_stream():
            body += chunk
            if len(body) > limit:
                raise FetchError(f"{what} answered more than the limit of {limit} bytes")
        return Answer(reply.status, _header(reply, b"content-type") or "", bytes(body))


@asynccontextmanager
async def _answer(
    url: str, policy: UrlPolicy, headers: Sequence[tuple[str, str]] = (), what: str = ""
) -> AsyncIterator[httpcore.Response]:
    """The answer to GET `url` once redirects are followed; its body is read inside the
    block, where a network error or a timeout becomes a FetchError too, naming `what`."""
    what = what or f"input {url}"
    timeout = dict.fromkeys(("connect", "read", "write", "pool"), DOWNLOAD_TIMEOUT_S)
    async with httpcore.AsyncConnectionPool(network_backend=GuardedBackend(policy)) as pool:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with pool.stream(
                    "GET", current, headers=list(headers), extensions={"timeout": timeout}
                ) as reply:
                    location = _header(reply, b"location")
                    if reply.status in REDIRECTS and location:
                        current = urljoin(current, location)
                        if urlparse(current).scheme not in {"http", "https"}:
                            raise FetchError(f"{what} redirects to {current}: not http(s)")
                        continue
                    yield reply
                    return
            except Refused as exc:
                where = what if current == url else f"{what} (redirected to {current})"
                raise FetchError(f"{where} is refused: {exc}") from None
            except httpcore.TimeoutException:
                raise FetchError(f"{what} cannot be downloaded: timed out") from None
            except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
                reason = str(exc) or type(exc).__name__
                raise FetchError(f"{what} cannot be downloaded: {reason}") from None
    raise FetchError(f"{what} redirects more than {MAX_REDIRECTS} times")


def _header(reply: httpcore.Response, name: bytes) -> str | None:
    for key, value in reply.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _save(reply: httpcore.Response, url: str, scratch: Path, limit: int) -> Path:
    if reply.status != 200:
        raise FetchError(f"input {url} answered HTTP {reply.status}")
    declared = int(_header(reply, b"content-length") or 0)
    if declared > limit:
        raise FetchError(f"input {url} is {declared} bytes; the limit is {limit}")
    target = scratch / (Path(unquote(urlparse(url).path)).name or "input")
    size = 0
    with target.open("wb") as out:
        async for chunk in reply.aiter_stream():
            size += len(chunk)
            if size > limit:
                raise FetchError(f"input {url} is larger than the limit of {limit} bytes")
            out.write(chunk)
    if size == 0:
        raise FetchError(f"input {url} is empty")
    return target
