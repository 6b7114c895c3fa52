"""What tracing and data collection cost the inference server, against the same server with
both off, in one run.

`uv run --no-sync python bench/run.py tracing`:

1. bench/inference's Ridge model and score.py (~0.1 ms per run(): the HTTP work dominates,
   so this is the worst case for per-request overhead);
2. one `python -m sluice.inference` server (one worker, one run() at a time, which lets it
   call run() on the event loop, its fastest mode) per setting:
   - `off` and `off-2` (tracing and collection off; two of them: the noise floor),
   - `tracing 1%` (the default ratio: new traces sampled at 0.01, spans as JSON lines),
   - `tracing 100%` (every request: a server span, a run() span, a log line),
   - `collection 1.0` (`model_inputs,model_outputs`, sampling_rate 1.0, JSON lines);
3. runs the servers on the last core and wrk (1 thread, 16 connections) on the first, in
   alternating 3 s rounds, seven each, after a 2 s warm-up; each round measures every
   server's requests/s and CPU time per request (user + system of the server process, all
   its threads: span export and the collector's writer included);
4. reports each setting against `off` round by round (both measured seconds apart) as
   median (min-max) with bench/stats.py, which flags rounds that disagree;
5. measures each feature's own CPU per request in this process (`overheads`).

On a machine shared with other work, rounds taken seconds apart swing by tens of percent
(`off` against `off-2`, two identical servers, is the noise floor), so read the CPU
ratios, and the in-process figures set against the server's CPU per request.

Targets (issue 18): tracing 100% costs <= 10% of the requests/s, the default ratio <= 2%,
off nothing measurable; collection at sampling 1.0 <= 5%.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from stats import cores, pin, spread  # noqa: E402 - bench/stats.py, found through the line above

_spec = importlib.util.spec_from_file_location(
    "bench_inference_helpers", HERE.parent / "inference" / "run.py"
)
assert _spec is not None and _spec.loader is not None
inference: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inference)

SECONDS = 3
ROUNDS = 7
WORK = inference.CACHE / "tracing"
# off-2 is the noise floor: its "cost" is how far two identical servers differ.
TARGETS = {"off-2": 0.0, "tracing 1%": 0.02, "tracing 100%": 0.10, "collection 1.0": 0.05}


def settings(work: Path) -> dict[str, list[str]]:
    traces, collected = work / "traces", work / "collected"
    (work / "overhead").mkdir(parents=True, exist_ok=True)
    return {
        "off": [],
        "off-2": [],
        "tracing 1%": ["--trace-dir", str(traces), "--trace-sampling-ratio", "0.01"],
        "tracing 100%": ["--trace-dir", str(traces), "--trace-sampling-ratio", "1.0"],
        "collection 1.0": [
            "--collect-dir", str(collected), "--collect", "model_inputs,model_outputs",
            "--collect-sampling-rate", "1.0",
        ],
    }  # fmt: skip


def overheads(work: Path, n: int = 20_000) -> dict[str, float]:
    """CPU us per request of each feature's own code, in this process (all threads: the
    span exporter and the collector's writer included), the least of three runs: figures
    the machine's load barely moves, to set beside the server's CPU per request."""
    import time

    from opentelemetry import trace

    from sluice.common.log import configure_logging
    from sluice.common.tracing import configure_tracing
    from sluice.inference.collector import CollectorSettings, DataCollector
    from sluice.inference.http import HttpRequest
    from sluice.inference.tracing import RequestTracer

    configure_logging(level="info", fmt="json")  # as the server runs: debug lines are dropped
    body = inference.BODY.encode()
    request = HttpRequest("POST", b"/score", [(b"content-type", b"application/json")], body, True)
    attributes = {"sluice.endpoint": "e", "sluice.deployment": "d", "sluice.instance": "i"}
    configure_tracing(
        "bench", sampling_ratio=1.0, folder=work, sampled_by_caller=True, resource=attributes
    )
    provider: Any = trace.get_tracer_provider()

    def traced(ratio: float) -> float:
        tracer = RequestTracer(trace.get_tracer("bench"), ratio)
        started = time.process_time()
        for _ in range(n):
            span = tracer.start(request, "rid-1", "/score")
            if span is not None:
                tracer.run(lambda: None, span, False)()
                tracer.answered(span, 200, "rid-1", [])
                span.end()
        provider.force_flush()
        return (time.process_time() - started) / n * 1e6

    def collected() -> float:
        folder = work / "collector-overhead"
        both = frozenset({"model_inputs", "model_outputs"})
        dc = DataCollector(CollectorSettings(folder=folder, collections=both))
        started = time.process_time()
        for _ in range(n):
            cid = dc.sample()
            assert cid is not None
            dc.add("model_inputs", cid, "rid-1", body)
            dc.add("model_outputs", cid, "rid-1", b"[152.1]")
        dc.flush()
        return (time.process_time() - started) / n * 1e6

    runs = {"tracing 1%": lambda: traced(0.01), "tracing 100%": lambda: traced(1.0)}
    runs["collection 1.0"] = collected
    return {name: min(run() for _ in range(3)) for name, run in runs.items()}


def main() -> None:
    available = cores()
    if len(available) >= 2:  # servers on the last core, wrk (started from here) on the first
        inference.SERVER_CPU = available[-1]
        pin(available[0])
        print(f"servers on CPU {available[-1]}, wrk on CPU {available[0]}")
    inference.WRK = inference.ensure_wrk()
    if inference.WRK is None:
        raise SystemExit("wrk is needed for this benchmark")
    model = inference.prepare_model()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    env = {**os.environ, "AZUREML_MODEL_DIR": str(model)}
    ports: dict[str, int] = {}
    processes = {}
    for name, extra in settings(WORK).items():
        ports[name] = inference.free_port()
        argv = [
            sys.executable, "-m", "sluice.inference", "--model", str(model / "model"),
            "--code", str(model / "code"), "--scoring-script", "score.py",
            "--port", str(ports[name]), "--max-queue", "64", "--log-format", "json", *extra,
        ]  # fmt: skip
        processes[name] = inference.start(argv, env, WORK / f"{name.replace(' ', '_')}.log")
    rps: dict[str, list[float]] = {name: [] for name in ports}
    cpu_us: dict[str, list[float]] = {name: [] for name in ports}
    try:
        for name, port in ports.items():
            inference.wait_for(f"http://127.0.0.1:{port}/ready", process=processes[name])
            inference.wrk(f"http://127.0.0.1:{port}/score", 2)  # warm-up
        for _ in range(ROUNDS):
            for name, port in ports.items():
                server = psutil.Process(processes[name].pid)
                before_cpu = sum(server.cpu_times()[:2])
                result = inference.wrk(f"http://127.0.0.1:{port}/score", SECONDS)
                used = sum(server.cpu_times()[:2]) - before_cpu
                rps[name].append(result.rps)
                cpu_us[name].append(used / (result.rps * SECONDS) * 1e6)
        for name in ports:
            print(f"RPS rounds: {name}", [round(r) for r in rps[name]], flush=True)
            print(f"CPU us/request rounds: {name}", [round(c) for c in cpu_us[name]], flush=True)
    finally:
        for process in processes.values():
            inference.stop(process)
    # Each round ran every server back to back: its ratios to `off` are the figures.
    print()
    print(f"| setting (1 worker, wrk -c{inference.CONNECTIONS}, {ROUNDS} x {SECONDS} s) "
          "| CPU us/request | CPU vs off, round by round | RPS vs off, round by round "
          "| target (CPU cost, median) |")  # fmt: skip
    print("|---|---:|---:|---:|---|")
    for name in ports:
        cpu = spread(cpu_us[name]).show("{:.0f}")
        if name == "off":
            print(f"| off | {cpu} | | | |")
            continue
        cost = spread([c / o - 1 for c, o in zip(cpu_us[name], cpu_us["off"], strict=True)])
        loss = spread([r / o - 1 for r, o in zip(rps[name], rps["off"], strict=True)])
        target = TARGETS[name]
        verdict = "noise floor" if name == "off-2" else (
            f"<= {target:.0%}: {'MET' if cost.median <= target else 'MISSED'}"
        )  # fmt: skip
        print(f"| {name} | {cpu} | {cost.show('{:+.1%}')} | {loss.show('{:+.1%}')} | {verdict} |")
    added = overheads(WORK / "overhead")
    off = min(cpu_us["off"])  # the least disturbed round: the nearest to a quiet machine
    print(f"\nthe features' own CPU per request, in-process (least of 3 x 20,000), against the"
          f" server's least CPU per request with both off ({off:.0f} us):")  # fmt: skip
    for name, us in added.items():
        target = TARGETS[name]
        share = us / off
        verdict = "MET" if share <= target else "MISSED"
        print(f"  {name}: +{us:.1f} us = {share:+.1%} (target <= {target:.0%}: {verdict})")
    spans = sum(1 for p in (WORK / "traces").glob("*.jsonl") for _ in p.open())
    records = sum(1 for p in (WORK / "collected").rglob("*.jsonl") for _ in p.open())
    print(f"\nspans written: {spans:,}; collected records: {records:,}")


if __name__ == "__main__":
    main()
