"""The access-log receiver: Forward-mode messages over TCP, counted where they were served;
a stream cut anywhere is read whole; anything else closes the connection, counted; with
the platform's TLS, only a client certificate of the platform CA gets records in."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from sluice.common import access_log as f
from sluice.common.pki import ALS_SERVER, PlatformPki
from sluice.common.supervisor import free_port
from sluice.metrics import forward
from sluice.metrics.buckets import Buckets
from sluice.testing.wait import wait_for_async


def record(endpoint: str, deployment: str, status: int, **extra: Any) -> dict[str, Any]:
    entry = f.Entry(
        endpoint=endpoint,
        deployment=deployment,
        start_ms=int(time.time() * 1000),
        duration_us=1500,
        status=status,
        flags="",
        request_header_bytes=100,
        request_body_bytes=20,
        response_header_bytes=80,
        response_body_bytes=10,
        method="POST",
        upstream="127.0.0.1:5001",
        path="/score",
    )
    return f.render(entry._replace(**extra))


def test_records_count_where_they_were_served() -> None:
    buckets, stats = Buckets(), forward.IngestStats()
    now = int(time.time())
    forward.add_records(
        buckets,
        stats,
        [
            [now, record("shop", "blue", 200)],
            [now, record("shop", "blue", 200)],
            [now, record("shop", "green", 503, flags="UH")],
            [now, record("shop", "", 401, upstream="")],  # Envoy's own: the route's endpoint
            [now, record("shop", "shadow", 200, mirror=True)],
            [now, record("", "", 404)],  # no endpoint at all
        ],
    )
    got = {(k[0], k[1], k[3]): b for k, b in buckets.take().items()}
    assert got[("shop", "blue", False)].requests == 2
    assert got[("shop", "blue", False)].bytes_in == 240
    assert got[("shop", "blue", False)].latency_sum_ms == 3.0
    assert got[("shop", "green", False)].failures == {"no_healthy_upstream": 1}
    assert got[("shop", "", False)].status_code == {"401": 1}
    assert got[("shop", "shadow", True)].requests == 1
    assert (stats.entries, stats.unattributed) == (6, 1)


def test_a_line_reads_back_as_written_and_the_path_may_hold_spaces() -> None:
    written = f.parse(record("shop", "blue", 503, flags="UH,URX", path="/a b?c= d", mirror=True))
    assert written == f.Entry(
        "shop", "blue", written.start_ms, 1500, 503, "UH,URX", 100, 20, 80, 10, "POST",
        "127.0.0.1:5001", "/a b?c= d", "", True,
    )  # fmt: skip
    line = "shop - 1800000000250 - 401 - 90 0 70 58 GET - /"  # Envoy's own 401, no duration
    own = f.parse({f.TEXT: line, f.REQUEST_ID: None})
    assert (own.deployment, own.duration_us, own.upstream, own.request_id) == ("", 0, "", "")
    assert (own.start_ms, own.status, own.bytes_out, own.mirror) == (1800000000250, 401, 128, False)


@pytest.mark.parametrize(
    "bad",
    [
        {f.TEXT: "shop blue 1800000000250 1500 200 - 100 20 80 10 POST"},  # fields missing
        {f.TEXT: "shop blue 1800000000250 1500 OK - 100 20 80 10 POST 127.0.0.1:5001 /"},
        {"endpoint": "shop", "status": 200},  # not this record at all
    ],
)
def test_a_record_that_is_not_one_is_refused(bad: dict[str, Any]) -> None:
    buckets, stats = Buckets(), forward.IngestStats()
    with pytest.raises((ValueError, KeyError)):
        forward.add_records(buckets, stats, [[0, bad]])
    assert stats.entries == 0


async def test_a_stream_cut_anywhere_is_read_whole_and_garbage_closes_it() -> None:
    buckets, stats = Buckets(), forward.IngestStats()
    port = free_port()
    server = await forward.serve("127.0.0.1", port, buckets, stats)
    try:
        now = int(time.time())
        message = msgpack.packb([f.TAG, [[now, record("shop", "blue", 200)]] * 50])
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        stream = message * 3
        for i in range(0, len(stream), 7):  # 7-byte pieces: messages cut anywhere
            writer.write(stream[i : i + 7])
        await writer.drain()

        async def counted() -> bool:
            return stats.entries == 150

        await wait_for_async(counted, "150 records counted", deadline=10)
        assert sum(b.requests for b in buckets.take().values()) == 150

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(msgpack.packb({"not": "forward mode"}))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the service
        assert stats.malformed == 1
    finally:
        server.close()


async def test_only_a_client_of_the_platform_ca_gets_records_in(tmp_path: Path) -> None:
    pki = PlatformPki(tmp_path / "pki")
    buckets, stats = Buckets(), forward.IngestStats()
    port = free_port()
    tls = forward.server_tls(pki.server(ALS_SERVER))
    server = await forward.serve("127.0.0.1", port, buckets, stats, tls=tls)
    message = msgpack.packb([f.TAG, [[int(time.time()), record("shop", "blue", 200)]]])

    def client(with_certificate: bool) -> ssl.SSLContext:
        identity = pki.client("sluice-gateway")
        context = ssl.create_default_context(cafile=str(identity.ca))
        if with_certificate:
            context.load_cert_chain(str(identity.cert), str(identity.key))
        return context

    async def kept_open(context: ssl.SSLContext) -> bool:
        """Whether the service kept the connection (it never answers a client that is in)."""
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname=ALS_SERVER
            )
            writer.write(message)
            await writer.drain()
            await asyncio.wait_for(reader.read(1), 0.5)
        except TimeoutError:
            return True
        except (ssl.SSLError, ConnectionError):
            return False
        return False  # closed by the service

    try:
        assert not await kept_open(client(with_certificate=False))
        assert await kept_open(client(with_certificate=True))

        async def counted() -> bool:
            return stats.entries >= 1

        await wait_for_async(counted, "the platform client's record counted", deadline=10)
        assert stats.entries == 1  # the client without a certificate got nothing in
    finally:
        server.close()
