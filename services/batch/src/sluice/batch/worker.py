"""`python -m sluice.batch.worker`: one batch worker, run in the deployment's environment.

It needs only NATS and the shared state folder (the artifact store, the
job's parts folder), so a worker on another machine can join a job. It
calls the scoring script's `init()` once, then pulls mini-batches one at a
time from the job's work-queue stream and calls `run(mini_batch)` with the
list of file paths, as Azure does.

Each message stays un-acked while run() works; the worker sends "in
progress" heartbeats so a short ack-wait detects a dead worker quickly
while a long run() is not redelivered. A worker killed mid-batch leaves the
message un-acked and JetStream gives it to another worker. A run() that
raises is redelivered until its attempts (`max_retries` + 1) are used up,
then reported failed; a run() that overruns `retry_settings.timeout` is
given up the same way, and this worker exits (its thread cannot be stopped)
for the runner to replace. Results go to the job's results stream, one
subject per mini-batch, so a mini-batch that runs twice is counted once.

Attempts are counted here, not by JetStream (whose consumer redelivers
without limit): a delivery is an attempt unless a worker that was stopped
(its service stopping or restarting) recorded it as interrupted, on
`<results>.interrupted.<index>.<delivery>`. So a restart of the batch
service costs no mini-batch an attempt, while a worker that dies (killed,
out of memory) does: the delivery after a mini-batch's last attempt is
reported failed without running it.

The pull loop is nats-py's own (`fetch(1)` on the runner's durable
consumer), not a FastStream subscriber: FastStream's dependency injection
hopped through a thread pool four times per message, and on a loaded
machine each hop waits for the CPU (profiled: bench/README.md, batch).
Per mini-batch the worker does one fetch, one thread for run(), one
result publish that waits for JetStream's ack (a result is stored before
its mini-batch is acked, so none is lost) and one ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from sluice.common.platform_link import platform_first

# In a deployment's environment the worker's own dependencies come from the platform,
# whatever the model pins (platform_link.py says why).
with platform_first():
    import nats
    import nats.errors
    from nats.aio.msg import Msg
    from pydantic import BaseModel

    from sluice.batch.output import write_part
    from sluice.common.runtime import wait_for_shutdown_signal

CONFIG_ENV = "SLUICE_BATCH_WORKER"
EXIT_INIT_FAILED = 3
EXIT_TIMED_OUT = 4
FETCH_WAIT_S = 1.0
# A stopped worker finishes the mini-batch in hand if it ends within this, else records it
# as interrupted (within the runner's STOP_GRACE_S, after which it is killed).
FINISH_WAIT_S = 3.0
STOP_WAIT_S = 1.0


class WorkerConfig(BaseModel):
    """What the runner tells a worker (as JSON in $SLUICE_BATCH_WORKER)."""

    nats_url: str
    inbox_prefix: str = "_INBOX"  # the job's own (its NATS user may receive only there)
    job: str
    worker: str
    stream: str
    subject: str
    durable: str
    results_stream: str
    results_prefix: str
    parts: str
    output_path: str
    output_file_name: str
    append_row: bool
    timeout_s: float
    ack_wait_s: float
    attempts: int  # per mini-batch: retry_settings.max_retries + 1
    model: str | None = None
    code: str | None = None
    scoring_script: str | None = None
    logging_level: str = "info"  # the deployment's settings.logging_level


class MiniBatch(BaseModel):
    index: int
    files: list[str]


class MiniBatchResult(BaseModel):
    """One mini-batch's outcome, published on `<results_prefix>.<index>`."""

    index: int
    ok: bool
    files: int
    rows: int = 0
    error: str = ""
    attempts: int = 1
    worker: str = ""
    seconds: float = 0.0
    finished_ns: int = 0  # when it was reported, ns since the epoch (its span's end)


def say(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} {message}", flush=True)


def load_functions(cfg: WorkerConfig) -> Any:
    """The deployment's scoring functions: its script, or the MLflow batch scorer.

    `logging_level` is the root logger's level, and, as Azure passes it, the script's
    `--logging_level` argument (`sys.argv`)."""
    logging.getLogger().setLevel(cfg.logging_level.upper())
    sys.argv = [sys.argv[0], "--logging_level", cfg.logging_level]
    if cfg.model:
        os.environ["AZUREML_MODEL_DIR"] = str(Path(cfg.model).resolve().parent)
    os.environ["AZUREML_BI_OUTPUT_PATH"] = cfg.output_path
    if cfg.scoring_script and cfg.code:
        from sluice.inference.script import load_script

        return load_script(Path(cfg.code) / cfg.scoring_script, Path(cfg.code))
    from sluice.batch.mlflow_scorer import MlflowBatchScorer

    if not cfg.model:
        raise RuntimeError("the deployment has neither a scoring script nor a model")
    return MlflowBatchScorer(Path(cfg.model)).functions()


class Worker:
    def __init__(self, cfg: WorkerConfig, functions: Any):
        self.cfg = cfg
        self.functions = functions
        self.timed_out = asyncio.Event()
        self.stopping = asyncio.Event()
        self.js: Any = None  # the JetStream context, once connected
        self.in_hand: tuple[Msg, MiniBatch] | None = None  # the mini-batch being scored

    def _score(self, batch: MiniBatch) -> int:
        result = self.functions.run(batch.files)
        if not self.cfg.append_row:
            from sluice.batch.output import count_rows

            return count_rows(result)
        return write_part(result, Path(self.cfg.parts), batch.index, self.cfg.output_file_name)

    async def _report(self, result: MiniBatchResult) -> None:
        result.finished_ns = time.time_ns()
        await self.js.publish(
            f"{self.cfg.results_prefix}.{result.index}",
            result.model_dump_json().encode(),
            stream=self.cfg.results_stream,
            timeout=10.0,
        )

    async def _attempt(self, batch: MiniBatch, delivered: int) -> int:
        """Which attempt this delivery is: deliveries so far, less those recorded as
        interrupted (read only when this is not the first)."""
        if delivered == 1:
            return 1
        try:
            info = await self.js.stream_info(
                self.cfg.results_stream, subjects_filter=self._interrupted_subject(batch, "*")
            )
        except Exception as exc:  # count every delivery, as JetStream would
            say(f"mini-batch {batch.index}: interrupted attempts not read ({exc!r})")
            return delivered
        return delivered - len(info.state.subjects or {})

    def _interrupted_subject(self, batch: MiniBatch, delivery: int | str) -> str:
        return f"{self.cfg.results_prefix}.interrupted.{batch.index}.{delivery}"

    async def handle(self, msg: Msg) -> None:
        batch = MiniBatch.model_validate_json(msg.data)
        attempt = await self._attempt(batch, msg.metadata.num_delivered)
        if attempt > self.cfg.attempts:  # the last attempt ended with its worker
            await self._given_up(msg, batch)
            return
        last = attempt >= self.cfg.attempts
        self.in_hand = msg, batch
        say(f"mini-batch {batch.index} attempt {attempt}: {len(batch.files)} files")
        started = time.monotonic()
        work = asyncio.ensure_future(asyncio.to_thread(self._score, batch))
        heartbeat = max(0.2, self.cfg.ack_wait_s / 3)
        while not work.done():
            await asyncio.wait([work], timeout=heartbeat)
            if work.done():
                break
            if time.monotonic() - started > self.cfg.timeout_s:
                error = f"run() did not finish within retry_settings.timeout={self.cfg.timeout_s}s"
                await self._failed(msg, batch, attempt, last, error, started)
                self.timed_out.set()  # run() still holds a thread: leave, the runner restarts us
                return
            await msg.in_progress()
        try:
            rows = work.result()
        except Exception:
            await self._failed(msg, batch, attempt, last, traceback.format_exc(), started)
            return
        seconds = time.monotonic() - started
        await self._settle(msg, batch, ok=True, attempts=attempt, rows=rows, seconds=seconds)
        say(f"mini-batch {batch.index} done: {rows} rows in {seconds * 1000:.1f} ms")

    async def _settle(
        self,
        msg: Msg,
        batch: MiniBatch,
        *,
        ok: bool,
        attempts: int,
        rows: int = 0,
        error: str = "",
        seconds: float = 0.0,
    ) -> None:
        """Report the mini-batch's outcome, then ack it (the result is stored first: a worker
        dying between the two leaves a mini-batch that runs again, counted once)."""
        result = MiniBatchResult(
            index=batch.index,
            ok=ok,
            files=len(batch.files),
            rows=rows,
            error=error,
            attempts=attempts,
            worker=self.cfg.worker,
            seconds=seconds,
        )
        await self._report(result)
        await msg.ack()

    async def _failed(
        self, msg: Msg, batch: MiniBatch, attempt: int, last: bool, error: str, started: float
    ) -> None:
        say(f"mini-batch {batch.index} attempt {attempt} failed:\n{error.rstrip()}")
        if not last:
            await msg.nak()
            return
        last_line = error.strip().splitlines()[-1] if error.strip() else "failed"
        seconds = time.monotonic() - started
        await self._settle(msg, batch, ok=False, attempts=attempt, error=last_line, seconds=seconds)

    async def _given_up(self, msg: Msg, batch: MiniBatch) -> None:
        error = (
            f"gave up after {self.cfg.attempts} attempts: its worker died during the last "
            "attempt or stopped answering (max_retries used up)"
        )
        say(f"mini-batch {batch.index}: {error}")
        await self._settle(msg, batch, ok=False, attempts=self.cfg.attempts, error=error)

    async def _interrupted(self, msg: Msg, batch: MiniBatch) -> None:
        """The mini-batch in hand goes back to the queue without costing it an attempt."""
        delivery = msg.metadata.num_delivered
        await self.js.publish(
            self._interrupted_subject(batch, delivery),
            b"",
            stream=self.cfg.results_stream,
            timeout=STOP_WAIT_S,
        )
        await msg.nak()
        say(f"mini-batch {batch.index} interrupted (delivery {delivery}): it will run again")

    async def pull(self, consumer: Any) -> None:
        """One mini-batch at a time until asked to stop (or a run() overran its timeout)."""
        while not self.stopping.is_set() and not self.timed_out.is_set():
            try:
                messages = await consumer.fetch(1, timeout=FETCH_WAIT_S)
            except nats.errors.TimeoutError:
                continue
            for msg in messages:
                await self.handle(msg)
                self.in_hand = None

    async def serve(self) -> int:
        cfg = self.cfg
        connection = await nats.connect(
            cfg.nats_url, name=f"sluice-batch-{cfg.worker}", inbox_prefix=cfg.inbox_prefix
        )
        self.js = connection.jetstream()
        # The runner declared the consumer (its ack-wait): bind to it as it is.
        consumer = await self.js.pull_subscribe_bind(cfg.durable, cfg.stream)
        say(f"{cfg.worker} pulling mini-batches of job {cfg.job}")
        pulling = asyncio.ensure_future(self.pull(consumer))
        stop = asyncio.ensure_future(wait_for_shutdown_signal())
        timed_out = asyncio.ensure_future(self.timed_out.wait())
        await asyncio.wait([stop, timed_out, pulling], return_when=asyncio.FIRST_COMPLETED)
        if timed_out.done():
            say(f"{cfg.worker} exits: a run() overran its timeout and still holds a thread")
            os._exit(EXIT_TIMED_OUT)
        self.stopping.set()  # finish the mini-batch in hand, if it is quick
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pulling), timeout=FINISH_WAIT_S)
        pulling.cancel()
        stop.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pulling
        if self.in_hand is not None:
            try:
                await self._interrupted(*self.in_hand)
            except Exception as exc:  # then it counts as an attempt, as a death would
                say(f"the interrupted mini-batch was not recorded: {exc!r}")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), timeout=STOP_WAIT_S)
        say(f"{cfg.worker} stopped")
        return 0


def main() -> None:
    cfg = WorkerConfig.model_validate_json(os.environ[CONFIG_ENV])
    say(f"{cfg.worker} starting (python {sys.version.split()[0]}, pid {os.getpid()})")
    try:
        functions = load_functions(cfg)
        functions.init()
    except Exception:
        say(f"init() failed:\n{traceback.format_exc().rstrip()}")
        sys.exit(EXIT_INIT_FAILED)
    say("init() done")
    code = asyncio.run(Worker(cfg, functions).serve())
    # Leave at once: libraries a scoring script imports may hold non-daemon threads.
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
