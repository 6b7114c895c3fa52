"""Batch jobs: rows/s against a plain pandas + sklearn loop, per-mini-batch overhead, memory.

Starts real nats-server, SecantusDB, the registry and the batch service,
writes a folder of CSV files and trains a small scikit-learn forest, then:

- baseline, same run: one process reads each file with pandas, predicts and
  writes the rows (the loop a user would write instead of a batch job);
- the same scoring script as a batch job with 1 and with 2 workers
  (max_concurrency_per_instance); rows/s over the job's run (first
  mini-batch taken to last one done, timed by the results the workers
  report) and end to end (invoke to Completed, worker start-up included);
- overhead: a job of many one-row files, one file per mini-batch, one
  worker: wall time per mini-batch minus the time spent inside run();
- start-up: invoke to the first mini-batch starting (the forest script, one
  10-row file), with the deployment's spare worker killed first (a cold
  worker: Python, pandas/sklearn imports, init()) and with a ready spare
  (the service keeps them warm per deployment environment);
- memory: a 1M-row job (one file per 100k rows); peak RSS of the batch
  service and of each worker, which must not grow with the job's size.

Every model call is single-threaded (OMP/BLAS threads = 1) on both sides. The loop and
the 1- and 2-worker jobs run BENCH_ROUNDS interleaved rounds (default 3), and the
start-up's cold and warm jobs BENCH_ROUNDS rounds: figures are median (min-max) over
rounds, ratios to the loop taken round by round. Overhead and memory are one job each.
BENCH_BATCH_FILES / BENCH_BATCH_ROWS shorten the throughput jobs.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
from faststream.nats import NatsBroker
from threadpoolctl import threadpool_limits

from sluice.batch.worker import MiniBatchResult
from sluice.sdk.batch import BatchClient, parse_overrides, state_name
from sluice.sdk.client import RegistryClient
from sluice.sdk.specs import load_batch_deployment, load_batch_endpoint
from sluice.testing.stack import servers, start_services

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stats import interleave, ratios, rounds, spread  # bench/stats.py

FEATURES = 8
FILES = int(os.environ.get("BENCH_BATCH_FILES", "24"))
ROWS_PER_FILE = int(os.environ.get("BENCH_BATCH_ROWS", "20000"))
ROUNDS = rounds(3)

SCRIPT = """\
import os

import joblib
import pandas as pd


def init():
    global model
    model = joblib.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.joblib"))


def run(mini_batch):
    frames = []
    for path in mini_batch:
        data = pd.read_csv(path)
        y = model.predict(data.values)
        frames.append(pd.DataFrame({"file": os.path.basename(path), "y": y}))
    return pd.concat(frames)
"""

TRIVIAL = """\
def init():
    pass


def run(mini_batch):
    return [f"{path},1" for path in mini_batch]
"""


def write_data(folder: Path, files: int, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(files):
        frame = pd.DataFrame(
            rng.normal(size=(rows, FEATURES)), columns=[f"f{j}" for j in range(FEATURES)]
        )
        frame.to_csv(folder / f"part-{i:04d}.csv", index=False)


def train(model_dir: Path) -> Any:
    import joblib
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, FEATURES))
    y = x @ rng.normal(size=FEATURES) + rng.normal(size=2000) * 0.1
    model = RandomForestRegressor(n_estimators=30, max_depth=8, n_jobs=1, random_state=0).fit(x, y)
    model_dir.mkdir(parents=True)
    joblib.dump(model, model_dir / "model.joblib")
    return model


def baseline(model: Any, data: Path, out: Path) -> tuple[float, int]:
    """The single-process loop: read, predict, append the rows as Azure would (one thread)."""
    with threadpool_limits(1):
        return _loop(model, data, out)


def _loop(model: Any, data: Path, out: Path) -> tuple[float, int]:
    started = time.perf_counter()
    rows = 0
    with out.open("w") as handle:
        for path in sorted(data.iterdir()):
            frame = pd.read_csv(path)
            result = pd.DataFrame({"file": path.name, "y": model.predict(frame.values)})
            result.to_csv(handle, sep=" ", header=False, index=False)
            rows += len(result)
    return time.perf_counter() - started, rows


class ResultWatch:
    """Records when each mini-batch's result arrives (a core NATS subscription, on a thread)."""

    def __init__(self, nats_url: str, subject: str):
        self.arrivals: list[tuple[float, MiniBatchResult]] = []
        self._nats_url = nats_url
        self._subject = subject
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("cannot subscribe to the results")

    async def _main(self) -> None:
        broker = NatsBroker(self._nats_url, logger=None)
        await broker.connect()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            self.arrivals.append((time.monotonic(), MiniBatchResult.model_validate_json(msg.data)))

        sub = await broker.connection.subscribe(self._subject, cb=on_msg)
        self._ready.set()
        await self._stop.wait()
        await sub.unsubscribe()
        await broker.stop()

    def close(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def peak_rss(batch_pid: int, stop: threading.Event, peaks: dict[str, int]) -> None:
    """Peak RSS of the batch service and of each of its worker processes (spares included)."""
    service = psutil.Process(batch_pid)
    while not stop.is_set():
        for proc in [service, *service.children()]:
            try:
                key = "service" if proc.pid == batch_pid else f"worker-{proc.pid}"
                if key == "service" or "sluice.batch" in " ".join(proc.cmdline()):
                    peaks[key] = max(peaks.get(key, 0), proc.memory_info().rss)
            except (psutil.Error, OSError):
                continue
        time.sleep(0.2)


def run_job(
    jobs: BatchClient, nats_url: str, data: Path, sets: list[str]
) -> tuple[Any, float, list[tuple[float, MiniBatchResult]]]:
    """The job, invoke -> Completed seconds, and (arrival, result) of each mini-batch;
    arrivals are relative to the invoke."""
    name = f"bench-{int(time.time() * 1000) % 10**9}"
    watch = ResultWatch(nats_url, f"sluice.batch.{name}.results.>")
    started = time.monotonic()
    jobs.invoke("bench-batch", input=str(data), overrides=parse_overrides(sets), job_name=name)
    while state_name(job := jobs.get(name)) not in {"Completed", "Failed", "Canceled"}:
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    watch.close()
    assert state_name(job) == "Completed", job.status_message
    return job, elapsed, sorted((t - started, r) for t, r in watch.arrivals)


def first_start(arrivals: list[tuple[float, MiniBatchResult]]) -> float:
    """Invoke to the first mini-batch's run() starting."""
    return min(t - r.seconds for t, r in arrivals)


def spares(batch_pid: int) -> list[psutil.Process]:
    """The batch service's live spare workers."""
    found = []
    for child in psutil.Process(batch_pid).children():
        try:
            if "sluice.batch.spare" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone, or a zombie not reaped yet
            continue
    return found


def wait_spares_ready(state_dir: Path, batch_pid: int, count: int) -> None:
    """Until `count` spares of the batch service have logged that their imports are done."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log = state_dir / "batch-spares" / "spares.log"
        text = log.read_text() if log.exists() else ""
        ready = [p for p in spares(batch_pid) if f"spare {p.pid} ready" in text]
        if len(ready) >= count:
            return
        time.sleep(0.1)
    raise TimeoutError("spares not ready")


def window(arrivals: list[tuple[float, MiniBatchResult]]) -> float:
    """First mini-batch started (its arrival minus its run time) to the last one done."""
    first_done, first = arrivals[0]
    return arrivals[-1][0] - (first_done - first.seconds)


def main() -> None:
    load = os.getloadavg()
    print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="sluice-bench-batch-") as tmp:
        root = Path(tmp)
        root.chmod(0o711)  # the deployment's own user traverses it to its workspace
        data = root / "data"
        write_data(data, FILES, ROWS_PER_FILE)
        model = train(root / "model")
        (root / "code").mkdir()
        (root / "code" / "score.py").write_text(SCRIPT)
        (root / "endpoint.yml").write_text("name: bench-batch\n")
        (root / "deployment.yml").write_text(
            "name: forest\nendpoint_name: bench-batch\ntype: model\nmodel: {path: model/}\n"
            "code_configuration: {code: code/, scoring_script: score.py}\n"
            "environment_variables: {OMP_NUM_THREADS: '1', OPENBLAS_NUM_THREADS: '1'}\n"
            "settings: {mini_batch_size: 2, max_concurrency_per_instance: 1}\n"
        )
        total_rows = FILES * ROWS_PER_FILE
        # The bench's data is read in place (a shared folder, as an operator would list
        # one), not uploaded per job: the jobs are what is measured.
        os.environ["SLUICE_BATCH_PATH_ROOTS"] = str(root)
        with servers(root / "platform") as (supervisor, settings):
            settings = start_services(supervisor, settings, ["registry", "batch"])
            assert settings.nats_url and settings.admin_token
            registry = f"127.0.0.1:{settings.ports.registry}"
            address = f"127.0.0.1:{settings.ports.batch}"
            with RegistryClient(registry, settings.admin_token) as client:
                client.create_batch_endpoint(load_batch_endpoint(root / "endpoint.yml").spec)
                spec = load_batch_deployment(root / "deployment.yml", client.upload).spec
                client.create_batch_deployment(spec, set_default=True)
            batch_pid = next(p.pid for p in supervisor.running if p.name == "batch")
            with BatchClient(address, settings.admin_token) as jobs:
                end_to_end: dict[str, list[float]] = {}

                def loop() -> float:
                    seconds, rows = baseline(model, data, root / "baseline.txt")
                    return rows / seconds

                def job_rate(workers: int) -> float:
                    """Rows/s while the job runs (first mini-batch to last); end to end aside
                    (it includes whatever worker start-up the round had: a spare or not)."""
                    job, elapsed, arrivals = run_job(
                        jobs, settings.nats_url, data, [f"max_concurrency_per_instance={workers}"]
                    )
                    out = Path(job.output_path) / "predictions.csv"
                    assert out.read_bytes() == (root / "baseline.txt").read_bytes()
                    assert len(arrivals) == job.progress.mini_batches_total, len(arrivals)
                    end_to_end.setdefault(f"{workers}", []).append(total_rows / elapsed)
                    return total_rows / window(arrivals)

                rates = interleave(
                    ROUNDS, {"loop": loop, "1": lambda: job_rate(1), "2": lambda: job_rate(2)}
                )  # the loop first: its output is what the jobs' must equal
                print(f"{total_rows:,} rows; {ROUNDS} interleaved rounds, median (min-max)")
                print(f"baseline loop: {spread(rates['loop']).show('{:,.0f}')} rows/s")
                for workers in ("1", "2"):
                    print(
                        f"job, {workers} worker(s): "
                        f"{spread(rates[workers]).show('{:,.0f}')} rows/s "
                        f"while running, x{spread(ratios(rates[workers], rates['loop'])).show()} "
                        f"of the loop per round; end to end (worker start-up included) "
                        f"x{spread(ratios(end_to_end[workers], rates['loop'])).show()}; "
                        "output identical to the loop's"
                    )
                one = root / "one"
                write_data(one, 1, 10, seed=3)
                starts: dict[str, list[float]] = {"cold": [], "warm": []}
                for _ in range(ROUNDS):
                    for proc in spares(batch_pid):
                        proc.kill()
                    _, _, cold = run_job(jobs, settings.nats_url, one, [])
                    wait_spares_ready(settings.state_dir, batch_pid, 1)
                    _, _, warm = run_job(jobs, settings.nats_url, one, [])
                    starts["cold"].append(first_start(cold))
                    starts["warm"].append(first_start(warm))
                warm_cold = spread(ratios(starts["warm"], starts["cold"]))
                print(
                    f"start-up, invoke -> first mini-batch running: cold worker "
                    f"{spread(starts['cold']).show()} s, warm spare {spread(starts['warm']).show()}"
                    f" s, warm / cold per round {warm_cold.show()}"
                )

                tiny = root / "tiny"
                tiny.mkdir()
                for i in range(200):
                    (tiny / f"t{i:04d}.csv").write_text("x\n1\n")
                (root / "code" / "score.py").write_text(TRIVIAL)
                with RegistryClient(registry, settings.admin_token) as client:
                    spec = load_batch_deployment(
                        root / "deployment.yml", client.upload, name="trivial"
                    ).spec
                    client.create_batch_deployment(spec, set_default=True)
                wait_spares_ready(settings.state_dir, batch_pid, 1)
                job, elapsed, arrivals = run_job(
                    jobs, settings.nats_url, tiny, ["mini_batch_size=1"]
                )
                gaps = [b[0] - a[0] - b[1].seconds for a, b in itertools.pairwise(arrivals)]
                print(
                    f"per-mini-batch overhead (1 worker, 200 one-file mini-batches): median "
                    f"{statistics.median(gaps) * 1000:.2f} ms, p90 "
                    f"{statistics.quantiles(gaps, n=10)[-1] * 1000:.2f} ms"
                )
                big = root / "big"
                write_data(big, 10, 100_000, seed=2)
                (root / "code" / "score.py").write_text(SCRIPT)
                with RegistryClient(registry, settings.admin_token) as client:
                    spec = load_batch_deployment(
                        root / "deployment.yml", client.upload, name="forest2"
                    ).spec
                    client.create_batch_deployment(spec, set_default=True)
                peaks: dict[str, int] = {}
                stop = threading.Event()
                sampler = threading.Thread(
                    target=peak_rss, args=(batch_pid, stop, peaks), daemon=True
                )
                sampler.start()
                job, elapsed, _ = run_job(
                    jobs,
                    settings.nats_url,
                    big,
                    ["mini_batch_size=1", "max_concurrency_per_instance=2"],
                )
                stop.set()
                sampler.join()
                size = (Path(job.output_path) / "predictions.csv").stat().st_size
                workers_mb = [v / 2**20 for k, v in peaks.items() if k.startswith("worker")]
                print(
                    f"1M rows ({size / 2**20:.0f} MB output) in {elapsed:.1f}s: peak RSS batch "
                    f"service {peaks.get('service', 0) / 2**20:.0f} MB, workers "
                    f"{max(workers_mb, default=0):.0f} MB each at most"
                )
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
