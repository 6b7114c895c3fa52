"""Adaptive (server-side) batching: concurrent requests merged into one run() call.

Opt-in per deployment: `MAX_BATCH_SIZE` (> 1) and `MAX_BATCH_WAIT_MS` in the
deployment's `environment_variables` (or `--max-batch-size` /
`--max-batch-wait-ms`), and a run() that takes batches: a scoring script that
sets `BATCHABLE = True` at module level, or the built-in pickle/ONNX scorers.
Such a run() takes `{"data": rows}` and answers a list with one value per row.

Requests whose body is `{"data": [row, ...]}` (and OIP inferences with one
input) are queued here instead of being called at once. A batch leaves when:

- no batch is running: at once, so a lone request waits for nothing;
- the running batch finishes: everything that arrived meanwhile, up to
  `max_batch_size` rows, goes as the next batch (so batches grow with load,
  to the size that keeps run() busy, with no timer tuned for it);
- `max_batch_wait_ms` passed since the oldest waiting request: it goes even
  while another batch runs (a second dispatcher slot).

A request whose client goes away while it waits leaves the queue (`submit`
returns what withdraws it): it neither holds a place that a live request would
get a 429 for, nor costs a share of a run() call. Once taken into a batch, its
rows run with the batch (the batch's places are the dispatcher's, not these).

The rows of all requests are concatenated, run() is called once through the
dispatcher (same time limit, same slots), and its list is cut back into one
answer per request. An answer whose length is not the number of rows fails
every request of that batch with a message saying so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from sluice.inference.dispatch import REJECTED, Dispatcher, OnDone, Outcome, Withdraw, never_waited


@dataclass(frozen=True)
class BatchSettings:
    max_size: int  # rows in one run() call
    max_wait_s: float


@dataclass(slots=True, eq=False)  # compared by identity: list.remove() finds this one
class _Waiting:
    rows: list[Any]
    on_done: OnDone
    span: Any = None  # the request's span when it is traced (tracing.py)


# Calls one batch's run() in a span linked to the requests' spans (tracing.py): called
# with the spans and the rows, then as the dispatcher's `around`.
TraceBatch = Callable[[list[Any], int, Callable[[], Any]], Any]


class BatchSizeMismatch(RuntimeError):
    """run() answered a number of values that is not the number of rows it got."""


def batch_rows(body: bytes) -> list[Any] | None:
    """The rows of a `{"data": [row, ...]}` body, or None when it is not that shape."""
    if not body.startswith(b"{"):
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        return None
    rows = value.get("data")
    return rows if isinstance(rows, list) and rows else None


class Batcher:
    """Collects rows from concurrent requests and calls `run` once per batch."""

    def __init__(
        self,
        settings: BatchSettings,
        dispatcher: Dispatcher,
        run: Callable[[str], Any],
        on_batch: Callable[[int], None] = lambda rows: None,
        trace: TraceBatch | None = None,
    ) -> None:
        self.settings = settings
        self._dispatcher = dispatcher
        self._run = run
        self._on_batch = on_batch
        self._trace = trace
        self._waiting: list[_Waiting] = []
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        limits = dispatcher.limits
        # The same bound on pending requests as the dispatcher's: beyond it, 429.
        self._max_waiting = limits.max_concurrent + limits.max_queue

    def submit(self, rows: list[Any], on_done: OnDone, span: Any = None) -> Withdraw:
        """Queue a request's rows; returns what takes them out again while they wait (True
        when it did: `on_done` will then never be called)."""
        if len(self._waiting) >= self._max_waiting:
            on_done(REJECTED)
            return never_waited
        waiting = _Waiting(rows, on_done, span)
        self._waiting.append(waiting)
        if self._running == 0:
            self._flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.settings.max_wait_s, self._flush)
        return lambda: self._withdraw(waiting)

    def _withdraw(self, waiting: _Waiting) -> bool:
        try:
            self._waiting.remove(waiting)
        except ValueError:  # already in a batch
            return False
        return True

    def _take(self) -> list[_Waiting]:
        """The oldest waiting requests, up to max_size rows (at least one request)."""
        taken: list[_Waiting] = []
        rows = 0
        while self._waiting:
            size = len(self._waiting[0].rows)
            if taken and rows + size > self.settings.max_size:
                break
            taken.append(self._waiting.pop(0))
            rows += size
        return taken

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self._take()
        if not batch:
            return
        merged = [row for waiting in batch for row in waiting.rows]
        body = orjson.dumps({"data": merged}).decode()
        run = self._run
        self._running += 1
        self._on_batch(len(merged))
        call: Callable[[], Any] = lambda: run(body)  # noqa: E731 - the call to dispatch
        spans = [waiting.span for waiting in batch if waiting.span is not None]
        around = None  # the batch's run() span, outside what the dispatcher times as run()
        if spans and self._trace is not None:
            around = partial(self._trace, spans, len(merged))
        self._dispatcher.submit(call, lambda outcome: self._done(batch, outcome), around)
        if self._waiting and self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.settings.max_wait_s, self._flush)

    def _done(self, batch: list[_Waiting], outcome: Outcome) -> None:
        self._running -= 1
        for waiting, part in zip(batch, _split(batch, outcome), strict=True):
            waiting.on_done(part)
        if self._waiting and self._running == 0:
            self._flush()


def _split(batch: list[_Waiting], outcome: Outcome) -> list[Outcome]:
    """One outcome per request: its slice of run()'s list, or the batch's failure."""
    if outcome.kind != "ok":
        return [outcome] * len(batch)
    values = outcome.value
    if hasattr(values, "tolist"):  # numpy arrays and pandas objects
        values = values.tolist()
    total = sum(len(w.rows) for w in batch)
    if not isinstance(values, list) or len(values) != total:
        got = len(values) if isinstance(values, list) else type(values).__name__
        error = BatchSizeMismatch(
            f"a batched run() must answer one value per row: it got {total} rows and answered {got}"
        )
        return [Outcome("error", error=error, run_seconds=outcome.run_seconds)] * len(batch)
    parts = []
    at = 0
    for waiting in batch:
        size = len(waiting.rows)
        parts.append(Outcome("ok", values[at : at + size], run_seconds=outcome.run_seconds))
        at += size
    return parts
