"""gRPC's fork handlers are off in every process that imports `sluice.common` first.

With them on, a child forked to start a process as another user restarts gRPC's poller,
`close_fds` closes the poller's epoll descriptor and the child aborts before exec()
(grpc/grpc#43055: an instance "exited with code -6 ... epoll_wait error: Bad file
descriptor"). Whether that race is lost is chance; whether the handlers run is not: with
a gRPC server running, each fork either shows in gRPC's log or, when the handlers ran,
may end in that very abort.
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
        print(subprocess.run(["/bin/true"], preexec_fn=lambda: None).returncode)
    await server.stop(0)

asyncio.run(main())
"""


def _forks(first: str) -> tuple[int, str, set[int]]:
    """The script's exit code, gRPC's log and the forked children's exit codes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    env["GRPC_VERBOSITY"] = "INFO"  # gRPC logs what its fork handlers do at INFO
    done = subprocess.run(
        [sys.executable, "-c", FORKS.format(first=first)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stderr, {int(code) for code in done.stdout.split()}


@pytest.mark.integration  # starts a process
def test_importing_sluice_common_first_turns_grpc_s_fork_handlers_off() -> None:
    # The control: on by default, gRPC sees each fork (or a child aborts, as in CI).
    exit_code, log, codes = _forks(first="")
    assert "fork()" in log or codes != {0} or exit_code != 0, (log, codes)
    exit_code, log, codes = _forks(first="import sluice.common")
    assert exit_code == 0 and codes == {0} and "fork()" not in log, (log, codes)
