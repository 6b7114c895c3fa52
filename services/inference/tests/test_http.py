"""The inference server's HTTP layer on its own (no process): framing and handler failures."""

from __future__ import annotations

from typing import Any

from sluice.inference.http import Connection, HttpRequest, Responder


class Transport:
    """What a Connection writes to: the bytes, and whether it was closed."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connected(handler: Any) -> tuple[Connection, Transport]:
    conn, transport = Connection(handler, max_body_bytes=1000), Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def test_a_handler_that_raises_answers_500_and_closes() -> None:
    def broken(request: HttpRequest, conn: Responder) -> None:
        raise KeyError("a bug")

    conn, transport = connected(broken)
    conn.data_received(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    assert transport.written.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert transport.written.endswith(b'{"message": "internal server error"}')
    assert transport.closed


def test_204_and_304_carry_no_body_and_head_answers_leave_theirs_out() -> None:
    statuses = iter([204, 304, 200])

    def answer(request: HttpRequest, conn: Responder) -> None:
        conn.respond(request, next(statuses), [], b"{}")

    conn, transport = connected(answer)
    conn.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" * 2 + b"HEAD / HTTP/1.1\r\n\r\n")
    answers = transport.written.split(b"HTTP/1.1 ")[1:]
    assert answers[0] == b"204 No Content\r\n\r\n"
    assert answers[1] == b"304 Not Modified\r\n\r\n"
    assert answers[2] == b"200 OK\r\ncontent-length: 2\r\n\r\n"
