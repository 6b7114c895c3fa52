"""The dispatcher in this process: when run() goes inline, and the SIGALRM time limit there;
only run() itself is timed, not its span.

These run on pytest's main thread, where the event loop and the alarm live in
the server too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from sluice.inference.dispatch import (
    FAST_RUN_S,
    WARMUP_CALLS,
    AlarmGuard,
    Around,
    Dispatcher,
    Limits,
    Outcome,
    RunTimedOut,
)
from sluice.inference.http import HttpRequest
from sluice.inference.tracing import RequestTracer


async def score(dispatcher: Dispatcher, call: Any, around: Around | None = None) -> Outcome:
    done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    dispatcher.submit(call, done.set_result, around)
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


def holding(started: threading.Event, release: threading.Event) -> Around:
    """An `around` that keeps its call's slot (on a worker thread) until `release` is set;
    the wait is not run()'s time."""

    def around(call: Any) -> Any:
        started.set()
        release.wait(5)
        return call()

    return around


async def warm_up_on_threads(dispatcher: Dispatcher) -> None:
    """All but the last warm-up call: the next call still goes to a thread."""
    for _ in range(WARMUP_CALLS - 1):
        assert (await score(dispatcher, current_thread_name)).value.startswith("run")


async def test_calls_queued_behind_a_threaded_call_run_on_the_event_loop_in_turn() -> None:
    # Once one call went to a thread, the calls arriving meanwhile queue; run() is fast, so
    # each is called on the event loop when its turn comes, not handed to a thread as well.
    dispatcher = Dispatcher(Limits(1, 4, timeout_s=5.0), is_async=False)
    await warm_up_on_threads(dispatcher)
    started, release = threading.Event(), threading.Event()
    loop = asyncio.get_running_loop()
    done = [loop.create_future() for _ in range(4)]
    dispatcher.submit(current_thread_name, done[0].set_result, holding(started, release))
    assert await asyncio.to_thread(started.wait, 5)
    for future in done[1:]:
        dispatcher.submit(current_thread_name, future.set_result)
    assert dispatcher.in_flight == 4
    release.set()
    names = [outcome.value for outcome in await asyncio.gather(*done)]
    assert names[0].startswith("run")
    assert names[1:] == [threading.main_thread().name] * 3
    dispatcher.shutdown()


async def test_a_queued_call_on_the_event_loop_gets_what_is_left_of_its_limit() -> None:
    dispatcher = Dispatcher(Limits(1, 4, timeout_s=0.5), is_async=False)
    await warm_up_on_threads(dispatcher)
    started, release = threading.Event(), threading.Event()
    loop = asyncio.get_running_loop()
    first, slow = loop.create_future(), loop.create_future()
    dispatcher.submit(current_thread_name, first.set_result, holding(started, release))
    assert await asyncio.to_thread(started.wait, 5)
    submitted = time.monotonic()
    dispatcher.submit(lambda: time.sleep(5), slow.set_result)
    await asyncio.sleep(0.3)  # 0.3 s of the slow call's 0.5 s spent waiting for the slot
    release.set()
    assert (await first).kind == "ok"
    assert (await slow).kind == "timeout"
    assert 0.45 < time.monotonic() - submitted < 1.5
    assert dispatcher.stuck == 0  # the alarm stopped it: no thread is left running it
    dispatcher.shutdown()


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


class SlowSpanEnds(SpanProcessor):
    """A span processor that takes twice `FAST_RUN_S` at each span's end (as one exporting
    synchronously would), and keeps the spans."""

    def __init__(self) -> None:
        self.ended: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        time.sleep(2 * FAST_RUN_S)
        self.ended.append(span)


async def test_tracing_does_not_move_a_fast_run_off_the_event_loop() -> None:
    # The dispatcher times run() alone: its span's work, however slow, is not run()'s.
    provider = TracerProvider()
    spans = SlowSpanEnds()
    provider.add_span_processor(spans)
    tracer = RequestTracer(provider.get_tracer("test"), 1.0)
    request = HttpRequest("POST", b"/score", [], b"{}", True)
    dispatcher = Dispatcher(Limits(1, 1, timeout_s=1.0), is_async=False)
    for _ in range(WARMUP_CALLS + 1):
        span = tracer.start(request, "rid", "/score")
        assert span is not None
        outcome = await score(dispatcher, current_thread_name, span.run_inside)
    assert outcome.value == threading.main_thread().name
    assert outcome.run_seconds < FAST_RUN_S  # the 2 ms at the span's end are not in it
    run = spans.ended[-1]
    assert run.name == "run" and run.parent is not None
    assert run.parent.span_id == span.get_span_context().span_id
    dispatcher.shutdown()


async def test_an_async_runs_time_leaves_out_what_runs_around_it() -> None:
    dispatcher = Dispatcher(Limits(1, 0, timeout_s=1.0), is_async=True)

    async def slow_around(call: Any) -> Any:
        await asyncio.sleep(0.05)
        return await call()

    async def run() -> str:
        return "scored"

    outcome = await score(dispatcher, run, slow_around)
    assert outcome.value == "scored" and outcome.run_seconds < 0.05
    dispatcher.shutdown()
