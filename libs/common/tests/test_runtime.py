"""A service's process keeps its environment and memory from its user's other processes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys

import pytest

from sluice.common.runtime import PR_SET_DUMPABLE, keep_memory_private

pytestmark = pytest.mark.integration  # starts processes
NOBODY = 65534


def holder(private: bool) -> int:
    """A child standing for a service (made private or not), as an unprivileged user when
    the tests run as root (root reads any process's /proc)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest from here on
        try:
            if os.geteuid() == 0:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                # A change of user makes a process non-dumpable: as a service started as
                # that user is, the control is dumpable again.
                libc = ctypes.CDLL(ctypes.util.find_library("c"))
                libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
            if private and not keep_memory_private():
                os._exit(3)
            os.write(ready_w, b"1")
            signal.pause()
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1", "the holder failed to start"
    os.close(ready_r)
    return pid


def read_environ(pid: int) -> subprocess.CompletedProcess[bytes]:
    """What another process of the same user (deployment code) gets from /proc."""
    same_user = NOBODY if os.geteuid() == 0 else None
    cat = shutil.which("cat")
    assert cat is not None
    return subprocess.run(
        [cat, f"/proc/{pid}/environ"],
        capture_output=True,
        timeout=30,
        check=False,
        user=same_user,
        group=same_user,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
@pytest.mark.parametrize("private", [False, True])
def test_a_services_environment_is_out_of_reach_of_its_users_other_processes(
    private: bool,
) -> None:
    pid = holder(private)
    try:
        seen = read_environ(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if private:
        assert seen.returncode != 0 and b"Permission denied" in seen.stderr
        assert not seen.stdout
    else:  # the control: without it, the same user reads the environment
        assert seen.returncode == 0 and b"PATH=" in seen.stdout
