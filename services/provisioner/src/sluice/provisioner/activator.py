"""The activator: where the gateway sends requests for a deployment scaled to zero.

Envoy stays the only front door. A deployment whose autoscale setting decided zero
instances lists one pseudo-instance, `<name>-activator`, at this server's address, so
the traffic controller routes its cluster here as it routes any instance (same
gateway secret, same limits, same access log). A request that arrives is *held*:
the deployment is woken (its count is at least 1 until the autoscale setting decides
again after the wake), the provisioner starts an instance (a spare process makes that
a fraction of a second for a cached environment), and once it is ready the held
request is sent to it and its answer returned. The new instance is routed directly
from then on, and the activator leaves the list. The gateway's secret header names
the deployment (each deployment has its own, `sluice.common.gateway_auth`), so the
activator serves only what the gateway sent. Health checks (`/ready`) are answered
at once: the activator itself is always ready.

A small HTTP/1.1 server on httptools (already used by the inference server), and
httpx (already the provisioner's client) for the forwarded request.

gRPC (the Open Inference Protocol's `inference.GRPCInferenceService`) is held the same
way: its calls arrive here as HTTP (the gateway's reverse bridge sends the gRPC message
over the deployment's cluster) and are forwarded like REST; the activator's own refusals
of them are gRPC statuses (a header-only 200 with `grpc-status`, which the bridge passes
on).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import quote

import grpc
import httptools
import httpx

from sluice.common import gateway_auth
from sluice.common.headers import NOT_PROCESSED_HEADER
from sluice.common.log import get_logger

log = get_logger(__name__)
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "te",
    "upgrade",
    "proxy-connection",
}
FORWARD_TIMEOUT_S = 600.0
# What one request may hold in memory here. Only the gateway's requests get past their
# headers (the secret is checked there, before any body is read); these bound the rest.
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 100 * 1024 * 1024  # the inference server's own limit
REFUSED_LINGER_S = 1.0
WAKE_DEADLINE_S = 60.0  # longest a request is held for an instance (a cold environment)


class Activatable(Protocol):
    """What the activator needs of a local deployment."""

    endpoint: str
    name: str

    def activate(self) -> None: ...

    def release(self) -> None: ...

    def ready_address(self) -> str | None: ...


class Activator:
    def __init__(self, host: str, secret_key: str | None):
        self._host = host
        self._secret_key = secret_key or ""
        self._deployments: dict[str, Activatable] = {}  # by gateway secret
        self._server: asyncio.Server | None = None
        # The instance enforces the deployment's own request timeout (408); this is a backstop.
        self._client = httpx.AsyncClient(timeout=FORWARD_TIMEOUT_S)
        self.wake: Callable[[str], Awaitable[None]] | None = None  # the reconciler's touch
        self.address = ""
        self.held = 0  # requests held so far (for logs and tests)

    def register(self, deployment: Activatable) -> None:
        secret = gateway_auth.secret_for(self._secret_key, deployment.endpoint, deployment.name)
        self._deployments[secret] = deployment

    def knows(self, secret: str) -> bool:
        """Is `secret` the gateway's secret of a deployment held here?"""
        return secret in self._deployments

    def forget(self, deployment: Activatable) -> None:
        self._deployments = {s: d for s, d in self._deployments.items() if d is not deployment}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self._host, 0)
        port = self._server.sockets[0].getsockname()[1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.address = f"{host}:{port}"
        log.info("activator_listening", address=self.address)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._client.aclose()

    async def _woken(self, deployment: Activatable) -> str | None:
        """Wake `deployment` and wait for an instance that can take the held request: its
        address; None after WAKE_DEADLINE_S."""
        key = f"{deployment.endpoint}/{deployment.name}"
        started = time.monotonic()
        self.held += 1
        deployment.activate()  # until release(): a request waits, the deployment is not idle
        try:
            if self.wake is not None:
                await self.wake(key)
            address = deployment.ready_address()
            while address is None:
                if time.monotonic() - started > WAKE_DEADLINE_S:
                    log.warning("activation_timed_out", deployment=key)
                    return None
                await asyncio.sleep(0.01)
                address = deployment.ready_address()
        finally:
            deployment.release()
        log.info("activation_ready", deployment=key, waited_s=round(time.monotonic() - started, 3))
        return address

    async def handle(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        if path == "/ready" or path.startswith("/ready?"):
            return 200, [("content-type", "application/json")], b'{"ready": true}'
        secret = next((v for k, v in headers if k.lower() == gateway_auth.HEADER), "")
        deployment = self._deployments.get(secret)
        if deployment is None:
            return _refused(headers, 401, "not sent by the gateway")
        key = f"{deployment.endpoint}/{deployment.name}"
        address = await self._woken(deployment)
        if address is None:
            not_processed = [(NOT_PROCESSED_HEADER, "true")]
            return _refused(headers, 503, "no instance started in time", not_processed)
        sent = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        try:
            reply = await self._client.request(
                method, f"http://{address}{path}", headers=sent, content=body
            )
        except httpx.HTTPError as exc:
            log.warning("activation_forward_failed", deployment=key, error=str(exc))
            return _refused(headers, 502, "the started instance did not answer")
        log.info("activation_served", deployment=key, status=reply.status_code)
        answer = [(k, v) for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP]
        return reply.status_code, answer, reply.content


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection from Envoy: requests in order, keep-alive."""

    def __init__(self, activator: Activator):
        self._activator = activator
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0  # bytes of the request being read (head, then body)
        self._refused = False  # answered and closing: the rest of what arrives is ignored
        self._queue: asyncio.Queue[tuple[str, str, list[tuple[str, str]], bytes]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._task = asyncio.create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._refuse(400, "not HTTP/1.1")

    def _refuse(self, status: int, message: str) -> None:
        """Answer at once and end the connection, holding nothing more of the request: what
        still arrives is dropped (closing with it unread would reset the connection before
        the client read the answer), and the connection goes after REFUSED_LINGER_S."""
        self._refused = True
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        status, answer, body = _refused(self._headers, status, message)
        head = [f"HTTP/1.1 {status} {_reason(status)}", *(f"{k}: {v}" for k, v in answer)]
        head += [f"content-length: {len(body)}", "connection: close"]
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.abort)

    def _grow(self, size: int, limit: int, status: int, what: str) -> bool:
        """Count `size` more bytes of the request; refuse it past `limit`. Go on?"""
        self._size += size
        if self._size > limit:
            self._refuse(status, f"{what} larger than {limit} bytes")
        return not self._refused

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._size = b"", [], [], 0

    def on_url(self, url: bytes) -> None:
        if self._grow(len(url), MAX_HEAD_BYTES, 431, "request head"):
            self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._grow(len(name) + len(value), MAX_HEAD_BYTES, 431, "request head"):
            self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        """Only the gateway's requests are read on (its secret names the deployment)."""
        if self._refused:
            return
        path = self._url.decode("latin-1")
        if path == "/ready" or path.startswith("/ready?"):
            return
        secret = next((v for k, v in self._headers if k.lower() == gateway_auth.HEADER), "")
        if not self._activator.knows(secret):
            self._refuse(401, "not sent by the gateway")
        self._size = 0

    def on_body(self, body: bytes) -> None:
        if self._grow(len(body), MAX_BODY_BYTES, 413, "request body"):
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        method = self._parser.get_method().decode()
        self._queue.put_nowait(
            (method, self._url.decode("latin-1"), self._headers, b"".join(self._body))
        )

    async def _serve(self) -> None:
        while True:
            method, path, headers, body = await self._queue.get()
            try:
                status, answer, content = await self._activator.handle(method, path, headers, body)
            except Exception:
                log.exception("activator_failed")
                status, answer, content = 500, [], b"activator error"
            head = [f"HTTP/1.1 {status} {_reason(status)}"]
            head += [f"{k}: {v}" for k, v in answer]
            head.append(f"content-length: {len(content)}")
            if self._transport is None or self._transport.is_closing():
                return
            self._transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + content)


# The activator's refusals as gRPC statuses, for bridged gRPC calls.
GRPC_CODES = {401: grpc.StatusCode.UNAUTHENTICATED, 502: grpc.StatusCode.UNAVAILABLE,
              503: grpc.StatusCode.UNAVAILABLE}  # fmt: skip


def _refused(
    headers: list[tuple[str, str]],
    status: int,
    message: str,
    extra: list[tuple[str, str]] | None = None,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """A refusal as HTTP `status`, or, for a gRPC call the gateway bridged here, as the
    gRPC status of the same meaning (which the bridge passes on as it is)."""
    extra = extra or []
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    if not content_type.startswith("application/grpc"):
        return status, extra, message.encode()
    code = str(GRPC_CODES[status].value[0])
    grpc_headers = [("content-type", "application/grpc"), ("grpc-status", code)]
    return 200, [*grpc_headers, ("grpc-message", quote(message)), *extra], b""


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
