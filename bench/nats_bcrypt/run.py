"""NATS connect time with plain-text passwords against bcrypt hashes of several costs.

nats-server checks a bcrypt hash at every connection, so the cost factor is paid by
every service start and by every batch job's workers (whose user is added by a
reload just before they connect: sluice.common.nats_auth). One real nats-server
holds one user per variant; rounds interleave the variants (a busy machine slows
them alike) and each connection is a full `nats.connect` + `close` from nats-py.
The baseline is the plain-text user, measured in the same run.

Second figure: a batch job's user as the batch service adds it (`JobUsers.add`: the
configuration rewritten, nats-server sent SIGHUP) until nats-server accepts it
(`nats_accepts`, as the runner waits), with the bcrypt hash and, as the baseline,
with the plain password in the configuration as before.

    uv run python bench/run.py nats_bcrypt
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import bcrypt
import nats

from sluice.common.components import nats_spec
from sluice.common.nats_auth import (
    BCRYPT_COST,
    FOLDER,
    JobUsers,
    NatsUsers,
    Subjects,
    job_user,
    nats_accepts,
    with_user,
)
from sluice.common.supervisor import Supervisor, free_port

ROUNDS = 40
JOBS = 20  # per variant, interleaved
COSTS = sorted({4, BCRYPT_COST, 8, 10, 11})  # 11: nats-server's own `mkpasswd` default


def variants() -> dict[str, tuple[str, str]]:
    """name -> (password given by the client, what the configuration holds)."""
    password = secrets.token_urlsafe(24)
    found = {"plain": (password, password)}
    for cost in COSTS:
        salt = bcrypt.gensalt(cost, prefix=b"2a")
        found[f"bcrypt-{cost}"] = (password, bcrypt.hashpw(password.encode(), salt).decode())
    return found


async def connect_ms(url: str) -> float:
    started = time.perf_counter()
    client = await nats.connect(url, allow_reconnect=False)
    elapsed = (time.perf_counter() - started) * 1000
    await client.close()
    return elapsed


async def measure(address: str, users: dict[str, tuple[str, str]]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in users}
    for _ in range(ROUNDS):
        for name, (password, _) in users.items():
            url = address.replace("nats://", f"nats://{name}:{password}@")
            times[name].append(await connect_ms(url))
    return times


async def accept_ms(address: str, jobs: JobUsers, job: str) -> float:
    started = time.perf_counter()
    password = await asyncio.to_thread(jobs.add, job, {"publish": {"deny": [">"]}})
    url = with_user(address, job_user(job), password)
    assert await nats_accepts(url, deadline_s=10), f"{job} never accepted"
    elapsed = (time.perf_counter() - started) * 1000
    await asyncio.to_thread(jobs.remove, job)
    return elapsed


async def measure_jobs(address: str, jobs: JobUsers) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"plain": [], f"bcrypt-{BCRYPT_COST}": []}
    for i in range(JOBS):
        with mock.patch("sluice.common.nats_auth.hashed", lambda password, known=None: password):
            times["plain"].append(await accept_ms(address, jobs, f"plain-{i}"))
        times[f"bcrypt-{BCRYPT_COST}"].append(await accept_ms(address, jobs, f"hashed-{i}"))
    return times


def job_users(root: Path) -> dict[str, list[float]]:
    """A nats-server with the configuration `sluice up` writes, and jobs' users added."""
    users = NatsUsers.ensure(root, ["batch"], Subjects("sluice.events", "SLUICE_EVENTS"))
    with nats_server(root, users.config_file, users.pid_file) as address:
        return asyncio.run(measure_jobs(address, JobUsers(root / FOLDER)))


@contextlib.contextmanager
def nats_server(root: Path, config: Path, pid_file: Path | None = None) -> Iterator[str]:
    """A nats-server reading `config`, for the block; its address."""
    supervisor = Supervisor(root / "logs")
    spec = nats_spec(
        host="127.0.0.1",
        port=free_port(),
        monitor_port=free_port(),
        data_dir=root / "data",
        config=config,
        pid_file=pid_file,
    )
    try:
        supervisor.start(spec)
        yield spec.address
    finally:
        supervisor.stop_all()


def report(title: str, times: dict[str, list[float]]) -> None:
    base = statistics.median(times["plain"])
    count = len(times["plain"])
    print(f"{title:<11} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'p50 - plain':>12}  (n={count})")
    for name, values in times.items():
        p50 = statistics.median(values)
        p95 = statistics.quantiles(values, n=20)[-1]
        print(f"{name:<11} {p50:8.2f} {p95:8.2f} {max(values):8.2f} {p50 - base:+12.2f}")


def main() -> None:
    users = variants()
    with tempfile.TemporaryDirectory(prefix="bench-nats-bcrypt-") as folder:
        root = Path(folder)
        config = root / "nats.conf"
        entries = [{"user": n, "password": stored} for n, (_, stored) in users.items()]
        config.write_text(json.dumps({"server_name": "bench", "authorization": {"users": entries}}))
        with nats_server(root, config) as address:
            times = asyncio.run(measure(address, users))
    report("connect", times)
    with tempfile.TemporaryDirectory(prefix="bench-nats-jobs-") as folder:
        report("job user", job_users(Path(folder)))


if __name__ == "__main__":
    main()
