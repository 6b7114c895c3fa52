"""Process entry helpers: run a service's async main under uvloop until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import signal
import sys
from collections.abc import Awaitable, Callable

import uvloop

PR_SET_DUMPABLE = 4  # <linux/prctl.h>


async def wait_for_shutdown_signal() -> signal.Signals:
    """Return once SIGTERM or SIGINT arrives (the supervisor stops children with SIGTERM)."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await received
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def keep_memory_private() -> bool:
    """Make this process non-dumpable: its environment (SLUICE_ADMIN_TOKEN,
    SLUICE_SECRET_KEY, ...), memory and open files in /proc, and ptrace, are then out of
    reach of other processes of its user, which is where deployment code runs whenever the
    platform cannot switch users (a container's uid, a `sluice up` not run as root): a batch
    worker or an instance could otherwise read `/proc/<service>/environ`. Only processes
    with CAP_SYS_PTRACE (root on the host) still can. Children are dumpable again once they
    exec (the kernel resets the flag), so workers and instances are unaffected.
    Returns whether it took effect (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return bool(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)


def run(main: Callable[[], Awaitable[None]]) -> None:
    """A service's process: memory kept private (keep_memory_private), then `main`."""
    keep_memory_private()
    uvloop.run(main())  # type: ignore[arg-type]
