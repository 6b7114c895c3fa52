"""The activator's door: only the gateway's requests are read, and none without bound."""

from __future__ import annotations

import asyncio

from sluice.provisioner.activator import MAX_HEAD_BYTES, Activator


async def exchange(address: str, sent: bytes, then: bytes = b"") -> bytes:
    """Send `sent`; keep sending `then` while the connection stays open (at most ~1 MiB
    more): the answer, read until the activator closes the connection (a request it
    refuses) or, for one it serves, its first bytes."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(sent)
    await writer.drain()
    for _ in range(16 if then else 0):
        if writer.is_closing() or reader.at_eof():
            break
        try:
            writer.write(then)
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.sleep(0)
    answer = await asyncio.wait_for(reader.read(1 << 16), timeout=10)
    if answer.startswith(b"HTTP/1.1 4"):
        answer += await asyncio.wait_for(reader.read(), timeout=10)  # and then it closes
    writer.close()
    return answer


async def test_a_request_without_the_gateway_secret_is_refused_before_its_body() -> None:
    activator = Activator("127.0.0.1", "key")
    await activator.start()
    try:
        ready = await exchange(activator.address, b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n")
        assert ready.startswith(b"HTTP/1.1 200")
        # An endless chunked body from anyone but the gateway: answered and closed once the
        # headers are in, nothing of the body held.
        head = b"POST /score HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        chunk = b"10000\r\n" + b"\0" * 0x10000 + b"\r\n"
        refused = await exchange(activator.address, head, then=chunk)
        assert refused.startswith(b"HTTP/1.1 401") and b"not sent by the gateway" in refused
        # A head past its bound, however it goes on.
        huge = b"GET /score HTTP/1.1\r\nx-pad: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n"
        assert (await exchange(activator.address, huge)).startswith(b"HTTP/1.1 431")
    finally:
        await activator.close()
