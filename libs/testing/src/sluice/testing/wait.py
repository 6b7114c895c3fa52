"""The one way tests wait: poll a condition until it holds, or fail at a deadline.

Never a bare sleep (STYLE.md): every wait says what it waits for, so a timeout
reads as "timed out after 30s waiting for blue to settle; last: ...".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
INTERVAL_S = 0.05


def wait_for(
    condition: Callable[[], T | None],
    what: str,
    deadline: float = 60.0,
    why: Callable[[], str] | None = None,
) -> T:
    """Call `condition` until it returns something truthy (returned); `deadline` in seconds.

    A condition that raises OSError (a server not listening yet) counts as not yet.
    `why`, if given, explains a timeout (what is not there yet) in the failure message.
    """
    end = time.monotonic() + deadline
    last: object = None
    while True:
        try:
            value = condition()
        except OSError as exc:
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() > end:
            detail = why() if why is not None else f"last: {last!r}"
            raise AssertionError(f"timed out after {deadline}s waiting for {what}; {detail}")
        time.sleep(INTERVAL_S)


async def wait_for_async(
    condition: Callable[[], Awaitable[T | None]], what: str, deadline: float = 60.0
) -> T:
    """`wait_for` for an async condition, without blocking the event loop."""
    end = time.monotonic() + deadline
    last: object = None
    while True:
        try:
            value = await condition()
        except OSError as exc:
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(INTERVAL_S)
