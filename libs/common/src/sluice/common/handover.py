"""Handing a job to a spare process: one JSON line and an open log file over a socket.

A spare (an inference instance or a batch worker started ahead of time, its heavy
imports done) has a socket for stdin. Its owner sends the job, what the spare needs
to become that process, as one JSON line, with the job's log file passed as an open
file (SCM_RIGHTS): a spare may run as a deployment's user, who cannot open the
platform's log folder. Spares import this module before they wait, so it uses the
standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any


def hand_over(spare: subprocess.Popen[bytes], job: dict[str, Any], log: Path) -> None:
    """Send `job` to `spare` as one line, with `log` (opened here for appending)."""
    assert spare.stdin is not None
    line = (json.dumps(job) + "\n").encode()
    with log.open("ab") as out, socket.socket(fileno=os.dup(spare.stdin.fileno())) as channel:
        socket.send_fds(channel, [line], [out.fileno()])
    with contextlib.suppress(OSError):
        spare.stdin.close()


def receive() -> tuple[dict[str, Any] | None, int]:
    """In the spare: the job and its open log file from stdin; (None, -1) when stdin
    closes without a job (the owner stops the spare that way)."""
    channel = socket.socket(fileno=os.dup(0))
    data, fds, _, _ = socket.recv_fds(channel, 1 << 20, 1)
    if not fds:
        return None, -1
    while not data.endswith(b"\n"):
        more = channel.recv(1 << 20)
        if not more:
            break
        data += more
    channel.close()
    return json.loads(data), fds[0]


def take_log(log: int) -> None:
    """In the spare: the passed log becomes stdout and stderr, and stdin (the socket, done
    with) becomes /dev/null."""
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
