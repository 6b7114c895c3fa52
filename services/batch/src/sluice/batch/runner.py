"""The runner: takes one job from Queued to Completed, Failed or Canceled.

It builds (or reuses) the deployment's environment, puts every mini-batch on
the job's work queue, starts `instance_count x max_concurrency_per_instance`
workers and then only watches: results arrive on the results stream,
progress is recomputed from them and written to the job, dead workers are
replaced, the error threshold and cancel requests are checked. When every
mini-batch has an outcome the parts are joined into the output file, the
workers are stopped (compute exists only while the job runs) and the cost is
recorded. A runner stopped with its service leaves the job Running; the next
runner picks it up where the streams say it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
from faststream.nats import JStream, NatsBroker
from nats.js.api import DeliverPolicy

from sluice.batch.environment import model_environment
from sluice.batch.job_trace import JobTrace
from sluice.batch.jobs import Cost, Job, JobError, JobState, JobStore, Progress
from sluice.batch.output import OutputError, merge_parts, publish_files
from sluice.batch.queue import DURABLE, JobQueue
from sluice.batch.spares import SpareKey, SparePool, as_user, base_env
from sluice.batch.worker import (
    CONFIG_ENV,
    EXIT_INIT_FAILED,
    EXIT_TIMED_OUT,
    MiniBatch,
    MiniBatchResult,
    WorkerConfig,
)
from sluice.batch.workspace import JobSpace, batch_account, job_space, spare_home
from sluice.common import confine
from sluice.common.access import with_log_tail
from sluice.common.artifacts import ArtifactStore
from sluice.common.catalogue import Catalogue, UnknownInstanceType
from sluice.common.environments import EnvironmentBuilder, EnvironmentError_, ResolvedEnvironment
from sluice.common.handover import hand_over
from sluice.common.isolation import IsolationError
from sluice.common.log import get_logger
from sluice.common.nats_auth import (
    JobUsers,
    job_user,
    nats_accepts,
    nats_refuses,
    with_user,
    without_user,
)
from sluice.common.nats_callout import JobCallout
from sluice.common.resources import (
    BATCH_DEPLOYMENTS,
    BatchDeploymentDoc,
    BatchDeploymentSpec,
    EnvironmentSpec,
    OutputAction,
    deployment_id,
    from_document,
    utcnow,
)

log = get_logger(__name__)
TICK_S = 0.25
STOP_GRACE_S = 5.0
LOG_LINES_IN_ERRORS = 20
NATS_RELOAD_DEADLINE_S = 10.0
# Azure's message when no mini-batch's run() returned anything (the job fails).
NOTHING_SUCCEEDED = "No succeeded mini batch item returned from run()"


class JobAborted(Exception):
    """The job cannot go on; the message becomes its status message."""


@dataclass
class RunnerContext:
    store: JobStore
    db: Any  # AsyncDatabase: the registry's deployments
    broker: NatsBroker
    nats_url: str
    subject_prefix: str  # "sluice.batch"
    state_dir: Path
    jobs_dir: Path
    environments: EnvironmentBuilder
    artifacts: ArtifactStore
    catalogue: Catalogue
    spares: SparePool
    # A NATS user per job for its workers: `sluice up`'s (JobUsers, a reloaded configuration)
    # or compose's and Kubernetes' (JobCallout, nats-server's auth callout). None: an
    # operator's NATS, whose authentication is theirs; the workers use nats_url.
    job_users: JobUsers | JobCallout | None = None
    # compose and Kubernetes: workers start in a Landlock sandbox (confine.py).
    landlock: bool = False
    # The only local folders a job reads or writes (BatchService sets them: inputs.py).
    roots: tuple[Path, ...] = ()


def tail(path: Path, lines: int = LOG_LINES_IN_ERRORS) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        return b"".join(deque(handle, maxlen=lines)).decode(errors="replace").rstrip()


class JobLog:
    """The runner's log of one job (`<job>/logs/runner.log`), streamable like the workers'."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        with self.path.open("a") as out:
            out.write(f"{stamp} {message}\n")


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    warm: bool = False  # a spare became this worker
    started: float = field(default_factory=time.monotonic)

    @property
    def record_id(self) -> str:
        """Its compute record (`instance_history`): job, worker and pid make it unique."""
        return f"{self.log_path.parent.parent.name}/{self.name}/{self.process.pid}"

    def signal(self, sig: signal.Signals) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)


async def stop_all(workers: list[WorkerProcess]) -> None:
    """SIGTERM every worker, SIGKILL those still there after the grace period."""
    for worker in workers:
        worker.signal(signal.SIGTERM)
    exits = [asyncio.ensure_future(asyncio.to_thread(w.process.wait)) for w in workers]
    if not exits:
        return
    _, pending = await asyncio.wait(exits, timeout=STOP_GRACE_S)
    for worker in workers:
        worker.signal(signal.SIGKILL)
    if pending:
        await asyncio.wait(pending)


def worker_env(job: Job, python: str, home: Path, cfg: WorkerConfig) -> dict[str, str]:
    """A worker's whole environment: the base (nothing of the platform's, the deployment's
    variables), Azure's variables and its configuration."""
    env = {
        **base_env(python, home, job.settings.environment_variables),
        "AZUREML_DEPLOYMENT_NAME": job.deployment_name,
        "AZUREML_ENDPOINT_NAME": job.endpoint_name,
        CONFIG_ENV: cfg.model_dump_json(),
    }
    if cfg.code:
        env["AML_APP_ROOT"] = env["AZUREML_SOURCE_DIRECTORY"] = cfg.code
    if cfg.scoring_script:
        env["AZUREML_ENTRY_SCRIPT"] = cfg.scoring_script
    return env


def job_dir(jobs_dir: Path, name: str) -> Path:
    return jobs_dir / name


def sandbox(
    space: JobSpace,
    python: str,
    model: Path | None,
    code: Path | None,
    inputs: list[str],
    summary_only: bool = False,
) -> dict[str, list[str]]:
    """What a job's sandboxed workers may reach (confine.py adds the system's folders):
    read the platform, the environment, the deployment's model and code folders and the
    job's input files; write their HOME, the parts folder and, for a summary_only job,
    their output folder (AZUREML_BI_OUTPUT_PATH)."""
    artifacts = {str(path.parent) for path in (model, code) if path is not None}
    read = sorted(confine.platform_paths(python) | artifacts | set(inputs))
    write = [str(space.home), str(space.parts)] + ([str(space.output)] if summary_only else [])
    return {"read": read, "write": write}


def process_identity(pid: int) -> tuple[int, float]:
    """A process as (pid, start time): a pid alone may name another process after a reboot or
    wrap-around; a worker that was a spare shows its old environment in /proc."""
    try:
        return pid, psutil.Process(pid).create_time()
    except psutil.Error:
        return pid, 0.0


def stop_leftover_workers(workers: tuple[tuple[int, float], ...]) -> None:
    """Workers a previous runner of this host left behind (its service was killed)."""
    for pid, created in workers:
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created:
                os.killpg(pid, signal.SIGKILL)
        except (psutil.Error, OSError):
            continue


class JobRunner:
    def __init__(self, ctx: RunnerContext, job: Job):
        self.ctx = ctx
        self.job = job
        self.dir = job_dir(ctx.jobs_dir, job.name)
        self.log = JobLog(self.dir / "logs" / "runner.log")
        self.queue = JobQueue(job.name, ctx.subject_prefix)
        self.results: dict[int, MiniBatchResult] = {}
        self.workers: list[WorkerProcess] = []
        self.worker_seconds = job.cost.worker_seconds
        self.restarts = 0
        self.spare_key: SpareKey | None = None  # known once the environment is
        self.space: JobSpace | None = None  # who the workers are and their files, likewise
        self.warm: list[subprocess.Popen[bytes]] = []  # spares taken for this job's workers
        self._changed = asyncio.Event()
        self.trace = JobTrace(job)

    # ---- the job's life ----------------------------------------------------------------

    async def run(self) -> None:
        """Run the job to its end; a CancelledError (service stopping) leaves it Running."""
        with self.trace.job():
            await self._run()

    async def _run(self) -> None:
        subscribers: list[Any] = []
        try:
            await self._start()
            config = await self._prepare()
            subscribers.append(await self._follow_results())
            await self._start_workers(config)
            with self.trace.watching():
                final = await self._watch()
            await self._finish(final)
        except JobAborted as exc:
            self.log(f"job failed: {exc}")
            await self._finish(JobState.failed, str(exc))
        except asyncio.CancelledError:
            self.log("runner stopping with its service; the job resumes when it restarts")
            await self._stop_workers()
            raise
        except Exception as exc:
            log.exception("job_runner_crashed", job=self.job.name)
            try:
                await self._finish(JobState.failed, f"the batch runner failed: {exc!r}")
            except Exception:  # the job stays Running; a restarted service resumes it
                log.exception("job_finish_failed", job=self.job.name)
        finally:
            await self._stop_workers()
            for subscriber in subscribers:
                with contextlib.suppress(Exception):
                    await subscriber.stop()

    async def _start(self) -> None:
        if self.job.state is JobState.queued:
            started = await self.ctx.store.transition(
                self.job.name,
                JobState.running,
                when={JobState.queued},
                started_at=utcnow(),
            )
            if started is None:
                raise JobAborted("the job left Queued while it was being started")
            self.job = started
            self.log(
                f"job {self.job.name} running: {len(self.job.files)} files, "
                f"{len(self.job.mini_batches())} mini-batches, {self.job.workers} workers"
            )
        else:
            self.log(f"resuming job {self.job.name}")
            stop_leftover_workers(self.job.worker_processes)
            await self.ctx.store.workers_stopped([], job=self.job.name)

    async def _prepare(self) -> WorkerConfig:
        job = self.job
        self.log("preparing the deployment's environment")
        runtime = await deployment_runtime(self.ctx, job.endpoint_name, job.deployment_name)
        for warning in runtime.warnings:
            self.log(f"warning: {warning}")
        try:  # the deployment's own user, private copies of its files (workspace.py)
            space, model, code, inputs = await asyncio.to_thread(self._isolate, runtime)
        except (IsolationError, OSError) as exc:
            raise JobAborted(f"cannot isolate the deployment's workers: {exc}") from exc
        self.space = space
        self.log(f"workers run as {space.account.name}")
        s = job.settings
        summary_only = s.output_action is OutputAction.summary_only
        await self.queue.declare(self.ctx.broker, timeout_s=s.retry_settings.timeout_s)
        if not job.published:
            for index, files in enumerate(job.mini_batches()):
                seen = [inputs[f] for f in files]
                body = MiniBatch(index=index, files=seen).model_dump_json().encode()
                await self.queue.publish(self.ctx.broker, index, body)
            updated = await self.ctx.store.update(job.name, published=True)
            self.job = updated or job
            self.log(f"{len(job.mini_batches())} mini-batches queued")
        self.python = runtime.python
        self.spare_key = await asyncio.to_thread(spare_key_for, self.ctx, runtime, space)
        self.cwd = code or space.home
        self.sandbox: dict[str, list[str]] | None = None
        if self.ctx.landlock:
            self.sandbox = sandbox(
                space, runtime.python, model, code, list(inputs.values()), summary_only
            )
            self.log("workers start in a Landlock sandbox")
        return WorkerConfig(
            nats_url=await self._workers_nats_url(),
            inbox_prefix=self._workers_inbox_prefix(),
            job=job.name,
            worker="",
            stream=self.queue.work_stream,
            subject=self.queue.work_subject,
            durable=DURABLE,
            results_stream=self.queue.results_stream,
            results_prefix=self.queue.results_prefix,
            parts=str(space.parts),
            # summary_only: the script's own files go to a folder of the workers' (copied to
            # the job's output when it ends); append_row: the platform writes the output.
            output_path=str(space.output) if summary_only else job.output_path,
            output_file_name=s.output_file_name,
            append_row=s.output_action is OutputAction.append_row,
            timeout_s=s.retry_settings.timeout_s,
            ack_wait_s=JobQueue.ack_wait(s.retry_settings.timeout_s),
            attempts=s.retry_settings.max_retries + 1,
            model=str(model) if model else None,
            code=str(code) if code else None,
            scoring_script=runtime.spec.code_configuration.scoring_script or None,
            logging_level=s.logging_level,
        )

    async def _workers_nats_url(self) -> str:
        """A NATS user of this job alone (JobQueue.worker_permissions): the workers run the
        deployment's code, which must not reach other jobs' queues."""
        users = self.ctx.job_users
        if users is None:
            return self.ctx.nats_url
        password = await asyncio.to_thread(
            users.add, self.job.name, self.queue.worker_permissions()
        )
        url = with_user(without_user(self.ctx.nats_url), job_user(self.job.name), password)
        if not await nats_accepts(url, deadline_s=NATS_RELOAD_DEADLINE_S):
            raise JobAborted(
                f"NATS did not accept the job's workers' user within {NATS_RELOAD_DEADLINE_S:.0f}"
                f" s ({users.mechanism}: is nats-server running?)"
            )
        return url

    async def _remove_workers_user(self, users: JobUsers | JobCallout) -> None:
        """The job's user goes with it: once NATS refuses its password the change has taken
        effect (a reload also closes every connection of that user; its workers have
        stopped by now either way)."""
        await asyncio.to_thread(users.remove, self.job.name)
        password = users.password(self.job.name)
        url = with_user(without_user(self.ctx.nats_url), job_user(self.job.name), password)
        if not await nats_refuses(url, deadline_s=NATS_RELOAD_DEADLINE_S):
            self.log(
                f"NATS still accepts the ended job's user after {NATS_RELOAD_DEADLINE_S:.0f} s"
                f" ({users.mechanism}: see nats-server's log)"
            )

    def _workers_inbox_prefix(self) -> str:
        """The job's own inboxes (its user may receive on no other)."""
        return self.queue.inbox_prefix

    def _isolate(
        self, runtime: Runtime
    ) -> tuple[JobSpace, Path | None, Path | None, dict[str, str]]:
        """The job's workspace, and its model, code and inputs as the workers see them.

        Blocking (copies files)."""
        job = self.job
        account = batch_account(job.endpoint_name, job.deployment_name)
        space = job_space(self.ctx.state_dir, job.name, self.dir, account)
        if self.ctx.landlock and not account.switches:  # not the runner's logs: a HOME apart
            space = replace(space, home=space.folder / "home")
            space.home.mkdir(parents=True, exist_ok=True)
            space.parts.mkdir(parents=True, exist_ok=True)
        model = space.copy_artifact(runtime.model) if runtime.model else None
        code = space.copy_artifact(runtime.code) if runtime.code else None
        if job.settings.output_action is OutputAction.summary_only:
            space.make_output()  # AZUREML_BI_OUTPUT_PATH exists before any worker starts
        files = list(job.files)
        # What invoke allowed: the allowed roots, and this job's own folder (its downloads).
        copies = space.copy_inputs(files, (*self.ctx.roots, self.dir.resolve()))
        return space, model, code, dict(zip(files, copies, strict=True))

    async def _follow_results(self) -> Any:
        """Replay every mini-batch outcome so far, then follow new ones (`<index>` subjects:
        not the workers' interrupted deliveries)."""
        subscriber = self.ctx.broker.subscriber(
            f"{self.queue.results_prefix}.*",
            stream=JStream(self.queue.results_stream, declare=False),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            persistent=False,
        )

        async def on_result(result: MiniBatchResult) -> None:
            if result.index not in self.results:
                self.trace.mini_batch(result)
            self.results[result.index] = result
            self._changed.set()

        subscriber(on_result)
        await subscriber.start()
        return subscriber

    # ---- workers -----------------------------------------------------------------------

    async def _start_workers(self, config: WorkerConfig) -> None:
        self.config = config
        assert self.spare_key is not None
        self.warm = self.ctx.spares.take(self.spare_key, self.job.workers)
        for n in range(self.job.workers):
            await self._spawn(f"worker-{n}")
        await self._record_pids()

    async def _spawn(self, name: str) -> None:
        worker = self._launch(name)
        self.workers.append(worker)
        await self.ctx.store.worker_started(self.job, worker.record_id)
        how = "from a warm spare" if worker.warm else "cold"
        self.log(f"{name} started {how} (pid {worker.process.pid})")

    def _launch(self, name: str) -> WorkerProcess:
        """A spare of the deployment's environment becomes the worker, or, with none left,
        `python -m sluice.batch.worker` starts in it; either way in its own session."""
        log_path = self.dir / "logs" / f"{name}.log"
        cfg = self.config.model_copy(update={"worker": name})
        assert self.space is not None and self.spare_key is not None
        env = worker_env(self.job, self.python, self.space.home, cfg)
        if self.warm:
            spare = self.warm.pop()
            hand_over(spare, {"env": env, "cwd": str(self.cwd)}, log_path)
            return WorkerProcess(name, spare, log_path, warm=True)
        uid, gid, groups = as_user(self.spare_key.user)
        argv = [self.python, "-m", "sluice.batch.worker"]
        spec = b""
        if self.sandbox is not None:  # on stdin: the worker's uid may not read our files
            spec = json.dumps({**self.sandbox, "argv": argv}).encode()
            argv = confine.command(self.python)
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if spec else subprocess.DEVNULL,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        if process.stdin is not None:
            with process.stdin, contextlib.suppress(BrokenPipeError):
                process.stdin.write(spec)
        return WorkerProcess(name, process, log_path)

    async def _record_pids(self) -> None:
        processes = tuple(process_identity(w.process.pid) for w in self.workers)
        await self.ctx.store.update(self.job.name, worker_processes=processes)

    async def _reap_workers(self) -> None:
        """Replace workers that died; a failed init() ends the job with its traceback."""
        for worker in [w for w in self.workers if w.process.poll() is not None]:
            code = worker.process.returncode
            self.workers.remove(worker)
            self.worker_seconds += time.monotonic() - worker.started
            await self.ctx.store.workers_stopped([worker.record_id])
            if code == EXIT_INIT_FAILED:
                raise JobAborted(
                    with_log_tail(f"{worker.name}: init() failed.", tail(worker.log_path))
                )
            if code == EXIT_TIMED_OUT:  # its mini-batch's attempt took longer than timeout:
                # that mini-batch is retried or fails by itself (error_threshold), not the job
                self.log(f"{worker.name} stopped: a mini-batch timed out; starting a new one")
            else:
                self.restarts += 1
                self.log(f"{worker.name} exited with code {code}; starting a new one")
            if self.restarts > 3 * self.job.workers + 3:
                raise JobAborted(
                    with_log_tail(
                        f"workers keep dying ({self.restarts} restarts); the last was "
                        f"{worker.name}.",
                        tail(worker.log_path),
                    )
                )
            await self._spawn(worker.name)
            await self._record_pids()

    async def _stop_workers(self) -> None:
        for spare in self.warm:  # taken but never handed a job (the runner stopped first)
            spare.kill()
        self.warm = []
        await stop_all(self.workers)
        if self.workers:
            await self.ctx.store.workers_stopped([w.record_id for w in self.workers])
        for worker in self.workers:
            self.worker_seconds += time.monotonic() - worker.started
        if self.workers:
            self.log(f"{len(self.workers)} workers stopped")
        self.workers = []

    async def _publish_files(self, space: JobSpace) -> None:
        """A summary_only job's own files (whatever its end), copied to its output folder as
        the platform's; the workers' folder goes (with the workspace, or here)."""
        target = Path(self.job.output_path)
        try:
            count = await asyncio.to_thread(publish_files, space.output, target)
            self.log(f"{count} files the script wrote copied to {target}")
        except (OSError, OutputError) as exc:
            self.log(f"the files the script wrote were not copied to {target}: {exc}")
        if not space.account.switches:  # the runner's own folder, which stays
            await asyncio.to_thread(shutil.rmtree, space.output, True)

    # ---- watching ----------------------------------------------------------------------

    def _progress(self) -> tuple[Progress, tuple[JobError, ...]]:
        """Progress as Azure counts it: each item run() returned is one file that succeeded
        (at most the mini-batch's files); its other files, and every file of a mini-batch
        that failed after its retries, failed."""
        batches = self.job.mini_batches()
        done = [r for r in self.results.values() if r.ok]
        failed = [r for r in self.results.values() if not r.ok]
        errors = tuple(
            JobError(
                mini_batch=r.index,
                files=tuple(batches[r.index]) if r.index < len(batches) else (),
                exception=r.error,
                attempts=r.attempts,
            )
            for r in sorted(failed, key=lambda r: r.index)
        )
        progress = Progress(
            mini_batches_total=len(batches),
            mini_batches_done=len(done),
            mini_batches_failed=len(failed),
            files_total=len(self.job.files),
            files_succeeded=sum(succeeded(r) for r in done),
            files_failed=sum(r.files - succeeded(r) for r in self.results.values()),
        )
        return progress, errors

    def _first_failure(self, errors: tuple[JobError, ...]) -> str:
        """The first mini-batch that failed, or else the first whose run() returned fewer
        items than it had files (the error threshold's message)."""
        if errors:
            first = errors[0]
            names = ", ".join(Path(f).name for f in first.files)
            return f"mini-batch {first.mini_batch} ({names}): {first.exception}"
        short = min(i for i, r in self.results.items() if r.ok and r.rows < r.files)
        result = self.results[short]
        return (
            f"mini-batch {short}: run() returned {result.rows} items for {result.files} files "
            "(each returned item counts as one file that succeeded)"
        )

    def _cost(self) -> Cost:
        running = sum(time.monotonic() - w.started for w in self.workers)
        return self.job.cost.model_copy(update={"worker_seconds": self.worker_seconds + running})

    async def _watch(self) -> JobState:
        total = len(self.job.mini_batches())
        written: Progress | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=TICK_S)
            self._changed.clear()
            progress, errors = self._progress()
            if progress != written:
                await self.ctx.store.update(
                    self.job.name, progress=progress, errors=errors, cost=self._cost()
                )
                written = progress
            threshold = self.job.settings.error_threshold
            if threshold != -1 and progress.files_failed > threshold:
                raise JobAborted(
                    f"{progress.files_failed} files failed, more than error_threshold={threshold}; "
                    f"first: {self._first_failure(errors)}"
                )
            # From the same snapshot as the threshold's test: results that came during the
            # store's update are judged on the next pass, not completed unseen.
            if progress.mini_batches_done + progress.mini_batches_failed >= total:
                if not any(r.ok and r.rows > 0 for r in self.results.values()):
                    raise JobAborted(NOTHING_SUCCEEDED)
                return JobState.completed
            current = await self.ctx.store.get(self.job.name)
            if current is not None and current.cancel_requested:
                return JobState.canceled
            await self._reap_workers()

    async def _finish(self, state: JobState, message: str = "") -> None:
        await self._stop_workers()
        progress, errors = self._progress()
        done = sorted(i for i, r in self.results.items() if r.ok)
        s = self.job.settings
        if s.output_action is OutputAction.append_row and done and self.space is not None:
            target = Path(self.job.output_path) / s.output_file_name
            try:
                size = await asyncio.to_thread(merge_parts, self.space.parts, done, target)
                self.log(f"output written: {target} ({size} bytes)")
            except (OSError, OutputError) as exc:
                self.log(f"output not written: {exc}")
                state, message = JobState.failed, f"the output could not be written: {exc}"
        if s.output_action is OutputAction.summary_only and self.space is not None:
            await self._publish_files(self.space)
        if self.space is not None:
            await asyncio.to_thread(self.space.remove)
        if state is JobState.completed and not message:
            message = f"{progress.files_succeeded} of {progress.files_total} files scored" + (
                f"; {progress.files_failed} failed" if progress.files_failed else ""
            )
        # The job's NATS user goes before the job shows as ended: whoever sees it ended
        # (a client, a test) finds its workers' access gone too.
        if self.ctx.job_users is not None:
            await self._remove_workers_user(self.ctx.job_users)
        self.trace.ended(state, message)
        ended = await self.ctx.store.transition(
            self.job.name,
            state,
            when={JobState.queued, JobState.running},
            ended_at=utcnow(),
            progress=progress,
            errors=errors,
            status_message=message,
            cost=self._cost(),
            worker_processes=(),
        )
        await self.queue.delete(self.ctx.broker)
        if self.spare_key is not None:  # spares for the next job, now that this one is done
            self.ctx.spares.want(self.spare_key, self.job.workers)
        if ended is not None:
            self.job = ended
            # The cost before the message: a failed build's message ends with log lines.
            self.log(
                f"job {state.value} (cost {ended.cost.cost:.6f} USD for "
                f"{ended.cost.worker_seconds:.1f} worker-seconds): {message}"
            )


def succeeded(result: MiniBatchResult) -> int:
    """The files of a mini-batch that succeeded: as on Azure, each item run() returned is one
    (a file may give many rows: never more than the mini-batch's files); none if it failed."""
    return min(result.rows, result.files) if result.ok else 0


@dataclass(frozen=True)
class Runtime:
    """What a batch deployment's workers run: its spec, model, code and interpreter."""

    spec: BatchDeploymentSpec
    model: Path | None
    code: Path | None
    python: str
    warnings: tuple[str, ...] = ()


async def deployment_runtime(ctx: RunnerContext, endpoint: str, name: str) -> Runtime:
    """Read the deployment and build (or reuse) its environment; JobAborted if impossible."""
    raw = await ctx.db[BATCH_DEPLOYMENTS].find_one({"_id": deployment_id(endpoint, name)})
    if raw is None:
        raise JobAborted(f"deployment {name!r} was deleted")
    return await runtime_of(ctx, from_document(BatchDeploymentDoc, raw).spec)


async def runtime_of(ctx: RunnerContext, deployment: BatchDeploymentSpec) -> Runtime:
    """Build (or reuse) a deployment's environment; JobAborted if it does not build."""
    model = code = None
    if deployment.model.artifact:
        model = ctx.artifacts.path_of(deployment.model.artifact)
    if deployment.code_configuration.code:
        code = ctx.artifacts.path_of(deployment.code_configuration.code)
    try:
        env = await ctx.environments.ensure(
            environment_for(deployment, model, ctx.environments.resolve)
        )
    except EnvironmentError_ as exc:
        raise JobAborted(str(exc)) from exc
    return Runtime(deployment, model, code, env.python, tuple(env.warnings))


def spare_key_for(ctx: RunnerContext, runtime: Runtime, space: JobSpace | None = None) -> SpareKey:
    """Which spares can become this deployment's workers (as root: spares of its own user).

    Blocking (may create the user and its spare folder)."""
    spec = runtime.spec
    account = space.account if space else batch_account(spec.endpoint_name, spec.name)
    home = spare_home(ctx.state_dir, account) if account.switches else None
    return SpareKey.of(runtime.python, spec.settings.environment_variables, account, home)


def environment_for(
    deployment: BatchDeploymentSpec,
    model: Path | None,
    resolve: Callable[[EnvironmentSpec], ResolvedEnvironment],
) -> EnvironmentSpec:
    """The deployment's environment; for a script-less MLflow model, the model's own
    (`resolve`: the environment builder's, which says which Python it would run)."""
    spec = deployment.environment
    if spec.conda_file or spec.pip_requirements or spec.image or spec.registered:
        return spec
    if model is not None and not deployment.code_configuration.scoring_script:
        return model_environment(model, resolve)
    return spec


def instance_type_of(catalogue: Catalogue, compute: str) -> tuple[str, float]:
    """A batch deployment's `compute` names its instance type when it is one; else the default."""
    try:
        found = catalogue.resolve(compute)
    except UnknownInstanceType:
        found = catalogue.resolve("")
    return found.name, found.price_per_hour
