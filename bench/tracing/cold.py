"""A traced (or collected) request's parts, timed in-process with run() between them, by hand.

    uv run --no-sync python bench/tracing/cold.py [--rounds 3] [--collect] now=. before=/tmp/before

In the server a traced request's tracing code runs between two run() calls, whose
sklearn and numpy code leave the caches cold for it: the same code costs 2-4x what a
loop of it alone measures (bench/README.md, tracing). Here each checkout's
`RequestTracer` traces 10,000 requests whose run() is bench/inference's Ridge model,
on the last core with the span writer process on the first, and each part is timed on
its own with `perf_counter_ns`: the span's start, run()'s span around run() (run()
itself left out), the answer's status and header, the span's end (with the sending of
full batches to the writer). Each round runs every checkout once, in a child process
importing `sluice.inference` and `sluice.common` from that checkout's source folders;
printed per checkout: the least of its rounds, part by part (a round is the mean over
its requests). `--collect` times data collection's parts instead (`model_inputs` and
`model_outputs` at sampling 1.0, the server's `CollectorFeed` with its feed thread and
writer process): the sample and the input's record before run(), the output's record
after it. Figures of one machine's quiet minutes: runs minutes apart can differ by
~2 us, so compare checkouts within one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTS = ("start", "run", "answered", "end")
COLLECT_PARTS = ("input", "output")


def prepare() -> tuple[Any, Path, Any]:
    """A child's start: bench/inference (its module, model folder and run()), JSON logs."""
    sys.path.insert(0, str(HERE.parent))
    from shared import bench_module  # bench/shared.py

    from sluice.common.log import configure_logging

    inference: Any = bench_module("inference")
    work = inference.prepare_model()
    run = inference.load_run(work)
    configure_logging(level="info", fmt="json")
    return inference, work, run


def pin_beside_writers() -> None:
    """This process on the last core, its writer processes on the first; then the garbage
    collector's freeze, as the server does once init() is done."""
    import gc

    import psutil
    from stats import cores, pin  # bench/stats.py (on the path since prepare())

    available = cores()
    pin(available[-1])
    for writer in psutil.Process().children():
        os.sched_setaffinity(writer.pid, {available[0]})
    gc.freeze()


def collect_child(requests: int) -> None:
    """One checkout's round of data collection: the mean time of each part, as one line."""
    from time import perf_counter_ns

    from sluice.inference.collector import CollectorFeed, CollectorSettings

    inference, work, run = prepare()
    both = frozenset({"model_inputs", "model_outputs"})
    folder = work / f"cold-collected-{os.getpid()}"
    feed = CollectorFeed(CollectorSettings(folder=folder, collections=both, instance="i"))
    feed.start()
    pin_beside_writers()  # this process and its feed thread; the writer on the other core
    body = inference.BODY
    payload = body.encode()
    totals = dict.fromkeys(COLLECT_PARTS, 0)
    for n in range(-2_000, requests):
        if n == 0:
            totals = dict.fromkeys(COLLECT_PARTS, 0)
        t0 = perf_counter_ns()
        cid = feed.sample()  # as app.py's _collect_input
        if cid is not None:
            feed.add("model_inputs", cid, "rid-1", payload)
        t1 = perf_counter_ns()
        answer = str(run(body)).encode()  # the reply's body, made by the server anyway
        t2 = perf_counter_ns()
        if cid is not None:  # as app.py's _collect_output
            feed.add("model_outputs", cid, "rid-1", answer)
        t3 = perf_counter_ns()
        totals["input"] += t1 - t0
        totals["output"] += t3 - t2
    feed.close()
    print("start=0 " + " ".join(f"{p}={totals[p] / requests / 1000:.3f}" for p in COLLECT_PARTS))


def child(requests: int) -> None:
    """One checkout's round: the mean time of each part, printed as one line."""
    from functools import partial
    from time import perf_counter_ns

    from opentelemetry import trace

    from sluice.common.tracing import configure_tracing
    from sluice.inference.http import HttpRequest
    from sluice.inference.tracing import RequestTracer

    inference, work, run = prepare()
    headers = [(b"content-type", b"application/json"), (b"host", b"localhost")]
    request = HttpRequest("POST", b"/score", headers, inference.BODY.encode(), True)
    folder = work / "cold-traces"
    folder.mkdir(exist_ok=True)
    attributes = {"sluice.endpoint": "e", "sluice.deployment": "d", "sluice.instance": "i"}
    configure_tracing(
        f"cold-{os.getpid()}",
        sampling_ratio=1.0,
        folder=folder,
        sampled_by_caller=True,
        resource=attributes,
        writer_process=True,
    )
    pin_beside_writers()
    tracer = RequestTracer(trace.get_tracer("cold"), 1.0)
    body, inside = inference.BODY, [0, 0]

    def scored() -> Any:
        inside[0] = perf_counter_ns()
        answer = run(body)
        inside[1] = perf_counter_ns()
        return answer

    totals = dict.fromkeys(PARTS, 0)
    # The first 2,000 untimed: the writer process is still starting (its pipe fills).
    for n in range(-2_000, requests):
        if n == 0:
            totals = dict.fromkeys(PARTS, 0)
        t0 = perf_counter_ns()
        span = tracer.start(request, "rid-1", "/score")
        t1 = perf_counter_ns()
        if hasattr(span, "run_inside"):
            span.run_inside(scored)
        else:  # a checkout from before run_inside (2026-11-27): its closure per request
            partial(tracer.run, span=span, is_async=False)(scored)()
        t2 = perf_counter_ns()
        tracer.answered(span, 200, "rid-1", [])
        t3 = perf_counter_ns()
        span.end()
        t4 = perf_counter_ns()
        totals["start"] += t1 - t0
        totals["run"] += t2 - t1 - (inside[1] - inside[0])
        totals["answered"] += t3 - t2
        totals["end"] += t4 - t3
    trace.get_tracer_provider().shutdown()  # type: ignore[attr-defined]
    print(" ".join(f"{part}={totals[part] / requests / 1000:.3f}" for part in PARTS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="*", help="name=checkout", default=["now=."])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--collect", action="store_true", help="data collection's parts")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    parts = COLLECT_PARTS if args.collect else PARTS
    if args.child:
        (collect_child if args.collect else child)(args.requests)
        return
    least: dict[str, dict[str, float]] = {}
    for r in range(args.rounds):
        for spec in args.checkouts:
            name, _, checkout = spec.partition("=")
            source = [Path(checkout) / "services/inference/src", Path(checkout) / "libs/common/src"]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(s.resolve()) for s in source)}
            argv = [sys.executable, __file__, "--child", "--requests", str(args.requests)]
            argv += ["--collect"] if args.collect else []
            out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
            (line,) = [line for line in out.stdout.splitlines() if line.startswith("start=")]
            found = dict(item.split("=") for item in line.split())
            figures = {part: float(found[part]) for part in parts}
            figures["sum"] = sum(figures.values())
            print(f"round {r + 1} {name}: " + "  ".join(f"{k} {v:.2f}" for k, v in figures.items()))
            best = least.setdefault(name, figures)
            for part, value in figures.items():
                best[part] = min(best[part], value)
    print(f"\nleast of {args.rounds} rounds x {args.requests:,} requests, us per request:")
    for name, figures in least.items():
        print(f"{name:>12}: " + "  ".join(f"{k} {v:5.2f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
