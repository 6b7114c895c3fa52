"""The dispatcher in this process: when run() goes inline, and the SIGALRM time limit there.

These run on pytest's main thread, where the event loop and the alarm live in
the server too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from sluice.inference.dispatch import (
    WARMUP_CALLS,
    AlarmGuard,
    Dispatcher,
    Limits,
    Outcome,
    RunTimedOut,
)


async def score(dispatcher: Dispatcher, call: Any) -> Outcome:
    done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    dispatcher.submit(call, done.set_result)
    return await done


def current_thread_name() -> str:
    return threading.current_thread().name


async def test_fast_sync_run_moves_onto_the_event_loop_after_warm_up() -> None:
    dispatcher = Dispatcher(Limits(1, 1, timeout_s=1.0), is_async=False)
    first = await score(dispatcher, current_thread_name)
    assert first.value.startswith("run")  # a worker thread while still measuring
    for _ in range(WARMUP_CALLS):
        await score(dispatcher, current_thread_name)
    inline = await score(dispatcher, current_thread_name)
    assert inline.value == threading.main_thread().name
    dispatcher.shutdown()


async def test_inline_run_past_the_limit_is_interrupted_and_later_calls_use_threads() -> None:
    dispatcher = Dispatcher(Limits(1, 1, timeout_s=0.2), is_async=False)
    for _ in range(WARMUP_CALLS):
        await score(dispatcher, current_thread_name)
    assert (await score(dispatcher, current_thread_name)).value == threading.main_thread().name
    started = time.monotonic()
    slow = await score(dispatcher, lambda: time.sleep(5))
    assert slow.kind == "timeout"
    assert time.monotonic() - started < 2
    # The slow call raised the average: the next ones are kept off the event loop.
    after = await score(dispatcher, current_thread_name)
    assert after.kind == "ok" and after.value.startswith("run")
    dispatcher.shutdown()


def test_a_timer_armed_for_an_earlier_call_still_gives_a_call_its_whole_limit() -> None:
    # AlarmGuard leaves the timer armed across calls: it goes off at the first call's
    # deadline, in the middle of the slow call, which must still get its own 0.3 s.
    guard = AlarmGuard()
    guard.call(lambda: None, 0.3)
    until = time.monotonic() + 0.2
    while time.monotonic() < until:  # a stream of fast calls, as under load
        assert guard.call(lambda: 7, 0.3) == 7
    started = time.monotonic()
    with pytest.raises(RunTimedOut):
        guard.call(lambda: time.sleep(5), 0.3)
    assert 0.29 < time.monotonic() - started < 2


def test_a_timer_going_off_between_calls_interrupts_nothing_and_the_next_call_is_limited() -> None:
    guard = AlarmGuard()
    guard.call(lambda: None, 0.05)
    time.sleep(0.1)  # the alarm goes off here, between calls: nothing is raised
    started = time.monotonic()
    with pytest.raises(RunTimedOut):
        guard.call(lambda: time.sleep(5), 0.05)
    assert 0.04 < time.monotonic() - started < 2


async def test_several_concurrent_runs_always_use_threads() -> None:
    dispatcher = Dispatcher(Limits(2, 0, timeout_s=1.0), is_async=False)
    for _ in range(WARMUP_CALLS + 1):
        outcome = await score(dispatcher, current_thread_name)
    assert outcome.value.startswith("run")
    dispatcher.shutdown()


async def test_exceptions_are_outcomes_not_crashes() -> None:
    dispatcher = Dispatcher(Limits(1, 0, timeout_s=1.0), is_async=False)

    def fail() -> None:
        raise KeyError("missing")

    outcome = await score(dispatcher, fail)
    assert outcome.kind == "error" and isinstance(outcome.error, KeyError)
    dispatcher.shutdown()
