"""Where and when run() executes: concurrency slots, a bounded queue, the time limit.

Up to `max_concurrent` calls run at once and `max_queue` more wait for a
slot; a request beyond that is rejected at once (429). A call that has not
finished `timeout_s` after its arrival (waiting included) is answered as
timed out (408).

Where a synchronous run() executes (measured in bench/inference):

- on a worker thread by default. A call that times out keeps its thread
  until it returns (Python cannot stop a thread), but its slot is freed, so
  the server keeps answering; the pool has `STUCK_RUNS_ALLOWED` spare
  threads for such calls, and `healthy` turns false when they are all taken,
  so the liveness probe fails and the instance is replaced.
- on the event loop itself ("inline") when one call at a time is allowed and
  run() has proved fast (a moving average under `FAST_RUN_S` after
  `WARMUP_CALLS` calls): at once when nothing else is in flight, else when its
  turn in the queue comes. Handing a call to a thread and back costs ~20 us,
  which for a ~80 us sklearn predict is 15% of the throughput. The time limit
  is then enforced with SIGALRM, as Azure's own server does: the alarm raises
  inside run(). A slow call moves the average up and the next calls go back to
  threads, so a slow run() never holds up probes for more than one call.
  Only run() itself is timed (`Stopwatch`): what a caller runs around it on
  the same thread (run()'s span, `around`) is not run()'s time, neither for
  this choice nor in the reported `run_seconds`.

An `async def run()` is awaited on the event loop.

A call still waiting for a slot can be withdrawn (its client went away): it then
leaves the queue and is never run, so abandoned requests do not fill the queue
and get live ones a 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal

STUCK_RUNS_ALLOWED = 4
WARMUP_CALLS = 32
FAST_RUN_S = 0.001
AVERAGE_WEIGHT = 0.1  # of the newest call in the moving average

Kind = Literal["ok", "error", "timeout", "rejected"]


@dataclass(frozen=True)
class Limits:
    max_concurrent: int
    max_queue: int
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    value: Any = None
    error: BaseException | None = None
    run_seconds: float = 0.0


REJECTED = Outcome("rejected")
TIMED_OUT = Outcome("timeout")

OnDone = Callable[[Outcome], None]
Call = Callable[[], Any]
# What runs around run() where run() runs (its span): called with run(), calls it and
# returns what it returns (for an `async def run()`, an awaitable of that).
Around = Callable[[Call], Any]
# Takes a submitted call out of its queue: True when it did (it will not run, and its
# on_done is never called), False when it already runs or has finished.
Withdraw = Callable[[], bool]


def never_waited() -> bool:
    """The Withdraw of a call answered at once: nothing to take out."""
    return False


class SpeedWatch:
    """Decides from past calls whether run() is fast enough to call on the event loop."""

    def __init__(self) -> None:
        self.calls = 0
        self.average_s = float("inf")

    def observe(self, seconds: float) -> None:
        self.calls += 1
        if self.calls == 1:
            self.average_s = seconds
        else:
            self.average_s += AVERAGE_WEIGHT * (seconds - self.average_s)

    def fast(self) -> bool:
        return self.calls >= WARMUP_CALLS and self.average_s < FAST_RUN_S


class RunTimedOut(Exception):
    """Raised inside an inline run() by the alarm."""


class AlarmGuard:
    """Calls a function on the main thread with a SIGALRM deadline.

    Arming and disarming the interval timer around every call would cost two
    system calls per request (profiled: bench/README.md, "inference"). Instead a
    call notes its deadline and leaves the timer running; it re-arms the timer
    only when it is off or would go off too late for this call. When the timer
    goes off, the handler raises in a call past its deadline, re-arms for the
    rest of a call that is not (the timer was armed for an earlier call), and
    leaves it off between calls. Each call still gets exactly its `timeout_s`,
    and a steady stream of calls costs one expiry per `timeout_s` instead of
    two system calls each.
    """

    def __init__(self) -> None:
        self._deadline = 0.0  # perf_counter() deadline of the call running now; 0.0: none
        self._fires_at = 0.0  # when the armed interval timer goes off; 0.0: it is off
        signal.signal(signal.SIGALRM, self._on_alarm)

    def call(self, function: Callable[..., Any], timeout_s: float, *args: Any) -> Any:
        """`function(*args)`, raising RunTimedOut after `timeout_s`."""
        # The deadline first: an alarm handled from here on sees this call.
        self._deadline = deadline = time.perf_counter() + timeout_s
        try:
            if not self._fires_at or self._fires_at > deadline:
                self._fires_at = deadline
                signal.setitimer(signal.ITIMER_REAL, timeout_s)
            return function(*args)
        finally:
            self._deadline = 0.0

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        self._fires_at = 0.0
        if not self._deadline:
            return  # went off between calls: the next call arms it again
        remaining = self._deadline - time.perf_counter()
        if remaining > 0:  # armed for an earlier call: wait for the rest of this one's time
            self._fires_at = self._deadline
            signal.setitimer(signal.ITIMER_REAL, remaining)
            return
        self._deadline = 0.0
        raise RunTimedOut


class Stopwatch:
    """A call of run() that notes how long run() itself took.

    The dispatcher calls `around(stopwatch)` (run() inside its span), and the span's work,
    its processors' and the garbage collection of its objects before or after run() are not
    counted: run()'s time decides whether run() is fast enough for the event loop, and is
    what the metrics and the `x-ms-run-fn-exec-ms` header report.
    """

    __slots__ = ("call", "seconds")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.seconds = 0.0

    def __call__(self) -> Any:
        started = time.perf_counter()
        try:
            return self.call()
        finally:
            self.seconds = time.perf_counter() - started

    async def awaited(self) -> Any:
        """The same for an `async def run()`."""
        started = time.perf_counter()
        try:
            return await self.call()
        finally:
            self.seconds = time.perf_counter() - started


def _timed(watch: Stopwatch, around: Around | None) -> Outcome:
    """Call run() (on a worker thread), inside `around` if given, and say how it went and
    how long run() took."""
    try:
        value = watch() if around is None else around(watch)
    except BaseException as exc:  # even SystemExit from run() must not kill the thread silently
        return Outcome("error", error=exc, run_seconds=watch.seconds)
    return Outcome("ok", value=value, run_seconds=watch.seconds)


class Dispatcher:
    """Runs scoring calls within the limits and reports each `Outcome` to its callback."""

    def __init__(
        self,
        limits: Limits,
        *,
        is_async: bool,
        on_in_flight: Callable[[int], None] | None = None,
    ) -> None:
        self.limits = limits
        self.in_flight = 0
        self.stuck = 0
        self._is_async = is_async
        # Told the new count on every change (a metrics gauge in worker processes); None: nobody.
        self.on_in_flight = on_in_flight
        self._slots = asyncio.Semaphore(limits.max_concurrent)
        self._pool = ThreadPoolExecutor(
            limits.max_concurrent + STUCK_RUNS_ALLOWED, thread_name_prefix="run"
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._queued: set[asyncio.Task[None]] = set()  # waiting for a slot
        self._idle = asyncio.Event()
        self._idle.set()
        inline_possible = limits.max_concurrent == 1 and not is_async
        self._speed = SpeedWatch() if inline_possible else None
        self._alarm = AlarmGuard() if inline_possible else None

    @property
    def healthy(self) -> bool:
        """False once every spare thread is held by a call that timed out."""
        return self.stuck < STUCK_RUNS_ALLOWED

    def submit(self, call: Call, on_done: OnDone, around: Around | None = None) -> Withdraw:
        """Run `call` (run()) within the limits, inside `around` if given; returns what
        withdraws it while it waits."""
        if self.in_flight == 0 and self._speed is not None and self._speed.fast():
            on_done(self._run_inline(call, around))
            return never_waited
        if self.in_flight >= self.limits.max_concurrent + self.limits.max_queue:
            on_done(REJECTED)
            return never_waited
        self._change_in_flight(+1)
        task = asyncio.get_running_loop().create_task(self._run_queued(call, on_done, around))
        self._tasks.add(task)
        self._queued.add(task)
        task.add_done_callback(self._tasks.discard)
        return lambda: self._withdraw(task)

    def _withdraw(self, task: asyncio.Task[None]) -> bool:
        if task not in self._queued:
            return False
        # Cancelled while it waits for the slot: asyncio's Semaphore hands a slot it had
        # just been given on to the next waiter, and _run_queued's finally counts it out.
        self._queued.discard(task)
        task.cancel()
        return True

    async def wait_idle(self, timeout_s: float) -> None:
        """Return when nothing is in flight, or after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run_inline(self, call: Call, around: Around | None) -> Outcome:
        self._change_in_flight(+1)
        try:
            return self._call_here(call, around, self.limits.timeout_s)
        finally:
            self._change_in_flight(-1)

    def _call_here(self, call: Call, around: Around | None, timeout_s: float) -> Outcome:
        """Call run() on the event loop, cut short by the alarm after `timeout_s`."""
        assert self._alarm is not None and self._speed is not None
        watch = Stopwatch(call)
        try:
            if around is None:
                value = self._alarm.call(watch, timeout_s)
            else:
                value = self._alarm.call(around, timeout_s, watch)
            outcome = Outcome("ok", value=value, run_seconds=watch.seconds)
        except RunTimedOut:
            outcome = TIMED_OUT
        except Exception as exc:
            outcome = Outcome("error", error=exc, run_seconds=watch.seconds)
        # A call cut short by the alarm took its whole limit, wherever the alarm caught it.
        self._speed.observe(timeout_s if outcome is TIMED_OUT else watch.seconds)
        return outcome

    async def _run_queued(self, call: Call, on_done: OnDone, around: Around | None) -> None:
        future: Future[Outcome] | None = None
        watch = Stopwatch(call)  # on a thread or awaited; _call_here has its own
        deadline = time.perf_counter() + self.limits.timeout_s
        try:
            async with asyncio.timeout(self.limits.timeout_s), self._slots:
                self._queued.discard(asyncio.current_task())
                if self._speed is not None and self._speed.fast():
                    # The one slot is this call's, so nothing else runs: a fast run() is
                    # called here as an inline one is. Else, once one call went to a thread
                    # (a slow call, or this process paused by the OS in the middle of one),
                    # the calls that queue behind it would each go to a thread as well, and
                    # under steady traffic the queue rarely empties: the server stayed in
                    # its slower mode for hundreds of requests at a time (bench/tracing).
                    left = deadline - time.perf_counter()
                    outcome = self._call_here(call, around, left) if left > 0 else TIMED_OUT
                elif self._is_async:
                    try:
                        if around is None:
                            value = await watch.awaited()
                        else:
                            value = await around(watch.awaited)
                    except Exception as exc:
                        outcome = Outcome("error", error=exc, run_seconds=watch.seconds)
                    else:
                        outcome = Outcome("ok", value, run_seconds=watch.seconds)
                else:
                    future = self._pool.submit(_timed, watch, around)
                    outcome = await asyncio.wrap_future(future)
        except TimeoutError:
            if future is not None and not future.cancel():
                self._count_stuck(future)
            outcome = TIMED_OUT
        finally:
            self._queued.discard(asyncio.current_task())
            self._change_in_flight(-1)
        if future is not None and self._speed is not None and outcome.kind != "timeout":
            self._speed.observe(outcome.run_seconds)
        on_done(outcome)

    def _count_stuck(self, future: Future[Outcome]) -> None:
        loop = asyncio.get_running_loop()
        self.stuck += 1

        def released(_: Future[Outcome]) -> None:
            loop.call_soon_threadsafe(self._release_stuck)

        future.add_done_callback(released)

    def _release_stuck(self) -> None:
        self.stuck -= 1

    def _change_in_flight(self, delta: int) -> None:
        self.in_flight += delta
        if self.on_in_flight is not None:
            self.on_in_flight(self.in_flight)
        if self.in_flight:
            self._idle.clear()
        else:
            self._idle.set()
