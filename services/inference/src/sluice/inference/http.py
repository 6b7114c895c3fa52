"""A small HTTP/1.1 server: an asyncio Protocol around httptools' parser.

Measured against uvicorn, granian and aiohttp (bench/inference/servers.py),
a bare protocol on uvloop answers about 3x more requests per second, and the
inference server needs nothing those frameworks add. What it does: keep-alive,
pipelined requests answered in order, chunked request bodies, `Expect:
100-continue`, a body size limit (413 before the body is read when
Content-Length says so), 400 on malformed requests.

Each parsed request goes to a `Handler`, which answers it, now or later, with
`Connection.respond`; the next request on the same connection waits for that. A handler
that queues a request may ask (`when_gone`) to hear when the client goes away before the
answer, so the request leaves the queue instead of holding a place there.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol, cast

import httptools
import structlog

log = structlog.get_logger("sluice.inference")
JSON_TYPE = (b"content-type", b"application/json")
# b"HTTP/1.1 200 OK\r\n" for every status code, rendered once.
STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
# Pipelined requests parsed ahead of the one being answered; past this, stop reading.
MAX_PIPELINED = 16
# The request line and headers (Envoy sends at most 60 KiB of headers by default): a
# client on the instance's port without the gateway cannot grow the process without bound.
MAX_HEAD_BYTES = 64 * 1024

Header = tuple[bytes, bytes]


@dataclass(slots=True)
class HttpRequest:
    method: str
    target: bytes  # path and query, as sent
    headers: list[Header] = field(default_factory=list)  # names lower-cased
    body: bytes = b""
    keep_alive: bool = True
    echoed: tuple[Header, ...] = ()  # request headers the answer repeats

    def header(self, name: bytes) -> bytes | None:
        """The first value of the (lower-case) header `name`, or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def path(self) -> str:
        return self.target.split(b"?", 1)[0].decode("latin-1")

    @property
    def query(self) -> str:
        _, _, query = self.target.partition(b"?")
        return query.decode("latin-1")


class Responder(Protocol):
    """What a handler answers through: a `Connection`, or a stand-in that translates the
    answer (the gRPC forms, oip_grpc.py and oip_grpc_http.py)."""

    def respond(
        self, request: HttpRequest, status: int, headers: Iterable[Header], body: bytes
    ) -> None: ...

    def when_gone(self, request: HttpRequest, callback: Callable[[], None]) -> None: ...


Handler = Callable[[HttpRequest, Responder], None]


# Answers that have no content (RFC 9110 6.4.1): a body after them would be read as the start
# of the next answer on the connection.
NO_CONTENT = frozenset({204, 304})


def render_response(
    status: int, headers: Iterable[Header], body: bytes, keep_alive: bool, head_only: bool = False
) -> bytes:
    """The answer's bytes. A 204 or 304 goes out without a body or length; the answer to a HEAD
    request (`head_only`) has the length of the body it leaves out."""
    head = [STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()]
    for name, value in headers:
        head.append(name + b": " + value + b"\r\n")
    if status in NO_CONTENT:
        head_only, body = True, b""
    else:
        head.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    if not head_only:
        head.append(body)
    return b"".join(head)


class Connection(asyncio.Protocol):
    """One client connection: parses requests and writes the handler's answers in order."""

    def __init__(self, handler: Handler, max_body_bytes: int) -> None:
        self._handler = handler
        self._max_body = max_body_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._current: HttpRequest | None = None  # being parsed
        self._url = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._waiting: deque[HttpRequest] = deque()  # parsed, not yet handled
        self._handling: HttpRequest | None = None  # handed to the handler, not answered yet
        self._gone: Callable[[], None] | None = None  # to call if the client leaves first
        self._paused = False
        self._too_large = False
        self._head_size = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._waiting.clear()
        gone, self._gone = self._gone, None
        if gone is not None:
            gone()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HTTPStatus.BAD_REQUEST, b"protocol upgrades are not supported")
        except httptools.HttpParserError:
            # httptools wraps exceptions of our callbacks in HttpParserCallbackError.
            if self._head_size > MAX_HEAD_BYTES:
                message = f"request line and headers are larger than {MAX_HEAD_BYTES} bytes"
                self._fail(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, message.encode())
            elif self._too_large:
                message = f"request body is larger than {self._max_body} bytes"
                self._fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message.encode())
            else:
                self._fail(HTTPStatus.BAD_REQUEST, b"malformed HTTP request")

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._current = HttpRequest(method="", target=b"")
        self._url = b""
        self._body = []
        self._body_size = 0
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        if self._head_size > MAX_HEAD_BYTES:
            raise _TooLarge  # data_received tells the head from the body by _head_size
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._current is not None
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEAD_BYTES:
            raise _TooLarge
        self._current.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        request = self._current
        assert request is not None and self._transport is not None
        request.method = self._parser.get_method().decode("ascii")
        request.target = self._url
        request.keep_alive = self._parser.should_keep_alive()
        length = request.header(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            self._too_large = True
            raise _TooLarge
        if request.header(b"expect") == b"100-continue":
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._too_large = True
            raise _TooLarge
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = self._current
        assert request is not None
        self._current = None
        if self._body:
            request.body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        if self._handling is not None:
            self._waiting.append(request)
            if len(self._waiting) >= MAX_PIPELINED and self._transport and not self._paused:
                self._transport.pause_reading()
                self._paused = True
            return
        self._handling = request
        self._dispatch(request)

    # answering

    def respond(
        self, request: HttpRequest, status: int, headers: Iterable[Header], body: bytes
    ) -> None:
        """Write the answer to `request` (the one being handled) and start on the next."""
        self._gone = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        head_only = request.method == "HEAD"
        transport.write(render_response(status, headers, body, request.keep_alive, head_only))
        if not request.keep_alive:
            transport.close()
            return
        self._handling = None
        if self._waiting:
            self._handling = self._waiting.popleft()
            self._dispatch(self._handling)
        if self._paused and len(self._waiting) < MAX_PIPELINED:
            transport.resume_reading()
            self._paused = False

    def _dispatch(self, request: HttpRequest) -> None:
        """Hand `request` to the handler. A bug there is a logged 500 for this request (and the
        connection closes), not the parser's "malformed request" nor a silent hang."""
        try:
            self._handler(request, self)
        except Exception:
            log.exception("handler_failed", method=request.method, path=request.path)
            if self._handling is request:  # not answered yet
                request.keep_alive = False
                self.respond(request, 500, [JSON_TYPE], b'{"message": "internal server error"}')

    def when_gone(self, request: HttpRequest, callback: Callable[[], None]) -> None:
        """Call `callback` if the client goes away before `request` (the one being handled)
        is answered."""
        if request is self._handling:
            self._gone = callback

    def _fail(self, status: HTTPStatus, message: bytes) -> None:
        """Answer a request the parser rejected and close: the stream cannot be trusted after it."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        body = b'{"message": "' + message + b'"}'
        transport.write(render_response(status.value, [JSON_TYPE], body, keep_alive=False))
        transport.close()


class _TooLarge(Exception):
    """Raised from a parser callback to stop reading a request (its head or its body) over
    the limit."""
