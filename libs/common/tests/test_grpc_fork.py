"""gRPC's fork handlers are off in every process that imports `sluice.common` first.

With them on, a child forked to start a process as another user restarts gRPC's poller,
`close_fds` closes the poller's epoll descriptor and the child aborts before exec()
(grpc/grpc#43055: an instance "exited with code -6 ... epoll_wait error: Bad file
descriptor"). Whether that race is lost is chance; whether the handlers run is not: with
a gRPC server running, gRPC reports each fork it sees.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

FORKS = """
import asyncio, subprocess
{first}
import grpc

async def main():
    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    for _ in range(5):  # preexec_fn makes subprocess fork(), as a user switch does
        subprocess.run(["/bin/true"], preexec_fn=lambda: None, check=True)
    await server.stop(0)

asyncio.run(main())
"""


def _forks(first: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    env["GRPC_VERBOSITY"] = "INFO"  # gRPC logs what its fork handlers do at INFO
    done = subprocess.run(
        [sys.executable, "-c", FORKS.format(first=first)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.integration  # starts a process
def test_importing_sluice_common_first_turns_grpc_s_fork_handlers_off() -> None:
    assert "fork()" in _forks(first="")  # the control: on by default, gRPC sees each fork
    assert "fork()" not in _forks(first="import sluice.common")
