"""sluice.common.nats_auth without a nats-server: what a refusal looks like, concurrent changes.

The real nats-server's answers are in tests/security/test_nats_permissions.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

from sluice.common.nats_auth import (
    CONFIG,
    FOLDER,
    JobUsers,
    NatsUsers,
    Subjects,
    job_user,
    nats_accepts,
    nats_refuses,
    worker_permissions,
)

INFO = b'INFO {"server_id":"x","version":"2.15.1","auth_required":true,"max_payload":1048576}\r\n'


async def test_a_connection_closed_before_the_handshakes_pong_is_not_accepted() -> None:
    """What nats-server does when a reload removes the user of a connection whose CONNECT it
    is checking: it closes the socket with no -ERR. nats-py's connect() returns then (without
    an error), yet the user was not accepted (the flake of test_an_ended_jobs_user_...)."""

    async def closes_after_connect(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(INFO)
        await writer.drain()
        while not (await reader.readline()).startswith(b"PING"):
            pass
        writer.close()  # EOF, no -ERR, no PONG

    server = await asyncio.start_server(closes_after_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"nats://job:password@127.0.0.1:{port}"
    async with server:
        assert not await nats_accepts(url, deadline_s=0)
        assert await nats_refuses(url, deadline_s=0)


def test_concurrent_changes_of_the_jobs_users_lose_none(tmp_path: Path) -> None:
    """The batch service adds and removes jobs' users from a thread per job: each change is a
    read-modify-write of batch-jobs.json, which two at once would lose one of."""
    NatsUsers.ensure(tmp_path, ["batch"], Subjects("sluice.events", "SLUICE_EVENTS"))
    users = JobUsers(tmp_path / FOLDER)
    jobs = [f"job-{i}" for i in range(8)]
    start = threading.Barrier(len(jobs) + 1)
    given: dict[str, str] = {}

    def add(job: str) -> None:
        start.wait()
        permissions = worker_permissions(
            f"W_{job}.workers", f"RS_{job}", f"R.{job}", f"_INBOX_{job}"
        )
        given[job] = users.add(job, permissions)

    def remove() -> None:
        start.wait()
        users.remove("gone")

    users.add("gone", worker_permissions("W.workers", "RS", "R", "_INBOX_gone"))

    threads = [threading.Thread(target=add, args=(job,)) for job in jobs]
    threads.append(threading.Thread(target=remove))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    config = json.loads((tmp_path / FOLDER / CONFIG).read_text())
    configured = {u["user"] for u in config["authorization"]["users"]}
    assert {job_user(j) for j in jobs} <= configured
    assert job_user("gone") not in configured
    assert given == {j: users.password(j) for j in jobs}
    assert not [p.name for p in (tmp_path / FOLDER).iterdir() if p.name.startswith(".")]


def test_a_jobs_password_is_derived_from_one_key_made_once(tmp_path: Path) -> None:
    """Threads asking first at once: one key is made, and each gets the same password."""
    (tmp_path / FOLDER).mkdir()
    users = JobUsers(tmp_path / FOLDER)
    start = threading.Barrier(8)
    passwords: list[str] = []

    def ask() -> None:
        start.wait()
        passwords.append(users.password("job"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(passwords) == 8 and set(passwords) == {users.password("job")}
