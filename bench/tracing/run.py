"""What tracing and data collection cost a deployment's requests/s, against the same server
with both off, in one run: straight to the inference server, and through the gateway
(Envoy) as a scoring client sees it.

`uv run --no-sync python bench/run.py tracing`:

1. bench/inference's Ridge model and score.py (~0.1 ms per run(): the HTTP work dominates,
   so this is the worst case for per-request overhead);
2. one `python -m sluice.inference` server (one worker, one run() at a time, which lets it
   call run() on the event loop, its fastest mode) per setting:
   - `off` and `off-2` (tracing and collection off; two of them: the noise floor),
   - `tracing 1%` (the default ratio: new traces sampled at 0.01, spans as JSON lines),
   - `tracing 100%` (every request: a server span, a run() span),
   - `collection 1.0` (`model_inputs,model_outputs`, sampling_rate 1.0, JSON lines),
   - `tracing 100%, one core` and `collection 1.0, one core`: the same, with the
     server's writer process (spans', collector's) on the server's core rather than on
     the other one (`ONE_CORE`);
3. one Envoy (`--concurrency 1`) with the traffic controller's configuration for five
   endpoints, one per server (key auth, the snapshot builder's routes, loaded statically);
4. the servers run on the last core, wrk (1 thread, 16 connections, closed loop: it
   measures how many requests/s the deployment answers) and Envoy on the first; rounds of
   3 s (BENCH_ROUNDS, default 12) after a 2 s warm-up, with a fresh set of servers for
   each round (or every BENCH_ROUNDS // 12 rounds: 12 sets in all; a server process keeps
   its own speed for life, and two identical ones differ by a few percent), each round
   measuring every (path, setting) once in an order that rotates (bench/stats.py
   `interleave`): requests/s, the server's CPU time per request (user + system, all its
   threads and its child processes: span export and the collector's writer process
   included), that of its own process alone (what its core spends while the writers run
   on the other one) and, through the gateway, Envoy's share of its core;
5. probes the host's speed on the servers' core before and after each measurement
   (bench/stats.py `host_speed`: a fixed Python loop; on a shared host it takes 1x to 2x
   its best time from one second to the next) and keeps the **quiet** rounds, those whose
   probes are within 10% of the run's best;
6. reports each setting's quiet rounds' requests/s as a share of the median of `off`'s
   quiet rounds on the same path, as median (min-max) with bench/stats.py, which flags
   rounds that disagree; `off-2` against `off` is the noise floor, and a target is only
   called MET or MISSED with 3 quiet rounds at least and when neither its rounds, off's
   nor the noise floor's disagree (a round whose wrk saw an error, e.g. a request timed
   out on a loaded machine, is redone);
7. measures each feature's own CPU per request in this process (`overheads`).

Targets (issue 18), on a deployment's requests/s: tracing 100% costs <= 10%, the default
ratio <= 2%, off nothing measurable; collection at sampling 1.0 <= 5%.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from shared import bench_module  # noqa: E402 - bench/shared.py
from stats import QUIET, cores, host_speed, interleave, pin, quiet, rounds, spread  # noqa: E402 - bench/stats.py, found through the line above

inference: Any = bench_module("inference")

SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))  # each measurement's wrk run
ROUNDS = rounds(12)
SERVER_SETS = 12  # fresh servers for every round, or every ROUNDS // 12 rounds
WORK = inference.CACHE / "tracing"
# off-2 is the noise floor: its "cost" is how far two identical servers differ.
# in-process, by setting: (the server's process, its writer process), us per request, per run
WRITER_SPLIT: dict[str, list[tuple[float, float]]] = defaultdict(list)
TARGETS = {"off-2": 0.0, "tracing 1%": 0.02, "tracing 100%": 0.10, "collection 1.0": 0.05}
# A server's writer processes (span export, the collector's writer) run where the scheduler
# puts them: the platform pins no instance to a core. Here they run on the other core
# (wrk's and Envoy's: a 2-core machine has none to spare), or, for the settings that end
# so, on the server's own core, as a deployment given one core would run them.
ONE_CORE = ", one core"


class Round(NamedTuple):
    """One measurement of one (path, setting)."""

    rps: float
    cpu: float  # the server's CPU us per request, its writer processes' included
    own: float  # the server's own process's (what its core spends when writers run elsewhere)
    envoy: float  # Envoy's share of its core
    probes: tuple[float, float]  # host_speed before and after, seconds


def target(setting: str) -> float:
    return TARGETS[setting.removesuffix(ONE_CORE)]


def settings(work: Path) -> dict[str, list[str]]:
    traces, collected = work / "traces", work / "collected"
    (work / "overhead").mkdir(parents=True, exist_ok=True)
    each = {
        "off": [],
        "off-2": [],
        "tracing 1%": ["--trace-dir", str(traces), "--trace-sampling-ratio", "0.01"],
        "tracing 100%": ["--trace-dir", str(traces), "--trace-sampling-ratio", "1.0"],
        "collection 1.0": [
            "--collect-dir", str(collected), "--collect", "model_inputs,model_outputs",
            "--collect-sampling-rate", "1.0",
        ],
    }  # fmt: skip
    for name in ("tracing 100%", "collection 1.0"):
        each[name + ONE_CORE] = each[name]
    return each


def overheads(work: Path, n: int = 20_000) -> dict[str, float]:
    """CPU us per request of each feature's own code, in this process (all threads) and in
    its writer process (`WRITER_SPLIT`), the least of three runs: figures the machine's
    load barely moves, to set beside the server's CPU per request."""
    import time

    from opentelemetry import trace

    from sluice.common.log import configure_logging
    from sluice.common.tracing import configure_tracing
    from sluice.inference.collector import CollectorFeed, CollectorSettings
    from sluice.inference.http import HttpRequest
    from sluice.inference.tracing import RequestTracer

    configure_logging(level="info", fmt="json")  # as the server runs: debug lines are dropped
    body = inference.BODY.encode()
    request = HttpRequest("POST", b"/score", [(b"content-type", b"application/json")], body, True)
    attributes = {"sluice.endpoint": "e", "sluice.deployment": "d", "sluice.instance": "i"}
    configure_tracing(
        "bench",
        sampling_ratio=1.0,
        folder=work,
        sampled_by_caller=True,
        resource=attributes,
        writer_process=True,  # as the inference server configures it
    )
    provider: Any = trace.get_tracer_provider()
    (span_writer,) = psutil.Process().children()  # the span exporter's writer process
    spans_file = work / f"bench-{os.getpid()}.jsonl"

    def spans_written() -> int:
        return sum(1 for _ in spans_file.open("rb")) if spans_file.exists() else 0

    def traced(ratio: float) -> float:
        tracer = RequestTracer(trace.get_tracer("bench"), ratio)
        expected, writer_before = spans_written(), sum(span_writer.cpu_times()[:2])
        started = time.process_time()
        for _ in range(n):
            span = tracer.start(request, "rid-1", "/score")
            if span is not None:
                span.run_inside(lambda: None)
                tracer.answered(span, 200, "rid-1", [])
                span.end()
                expected += 2
        provider.force_flush()
        here = (time.process_time() - started) / n * 1e6
        while spans_written() < expected:  # the writer has them all: its CPU is theirs
            time.sleep(0.01)  # a bench polling a file, not a test
        there = (sum(span_writer.cpu_times()[:2]) - writer_before) / n * 1e6
        WRITER_SPLIT[f"tracing {ratio:.0%}"].append((here, there))
        return here + there

    def collected() -> float:
        """The server's side (sample, queue, ship to the writer) and the writer process's
        CPU for the same records, both counted."""
        folder = work / f"collector-overhead-{time.monotonic_ns()}"
        both = frozenset({"model_inputs", "model_outputs"})
        feed = CollectorFeed(CollectorSettings(folder=folder, collections=both, instance="i"))
        feed.start()
        assert feed.writer.process is not None
        writer = psutil.Process(feed.writer.process.pid)
        stats = folder / "_stats" / "i.json"

        def written(count: int) -> None:  # the writer's own count, in its stats file
            while not stats.exists() or json.loads(stats.read_text())["written"] < count:
                time.sleep(0.01)  # a bench polling a file, not a test

        feed.add("model_inputs", 0, "rid-0", body)
        feed.ship()
        written(1)  # started, imports done: what follows is the records' work
        writer_before = sum(writer.cpu_times()[:2])
        started = time.process_time()
        for i in range(n):
            cid = feed.sample()
            assert cid is not None
            feed.add("model_inputs", cid, "rid-1", body)
            feed.add("model_outputs", cid, "rid-1", b"[152.1]")
            if i % 140 == 139:  # as the feed's thread ships, every 20 ms (~140 requests)
                feed.ship()
        feed.ship()
        here = (time.process_time() - started) / n * 1e6
        written(2 * n + 1)
        there = (sum(writer.cpu_times()[:2]) - writer_before) / n * 1e6
        feed.close()
        WRITER_SPLIT["collection 1.0"].append((here, there))
        return here + there

    runs = {"tracing 1%": lambda: traced(0.01), "tracing 100%": lambda: traced(1.0)}
    runs["collection 1.0"] = collected
    return {name: min(run() for _ in range(3)) for name, run in runs.items()}


def cpu(server: psutil.Process) -> tuple[float, float]:
    """User + system seconds of a server's own process, and of it and its child processes
    (span export, the collector's writer) together."""
    own = sum(server.cpu_times()[:2])
    total = own
    for process in server.children(recursive=True):
        try:
            total += sum(process.cpu_times()[:2])
        except psutil.NoSuchProcess:  # a Parquet converter that just ended
            continue
    return own, total


KEY = "bench-primary-key"
DOMAIN = "sluice.localhost"


def gateway(work: Path, ports: dict[str, int]) -> tuple[subprocess.Popen[bytes], int]:
    """Envoy routing `<host>.sluice.localhost` to each server as the traffic controller would
    (its snapshot builder, loaded as a static bootstrap); (process, HTTP port)."""
    from sluice.common.supervisor import resolve_binary
    from sluice.testing.envoy_static import static_bootstrap
    from sluice.traffic.domain import (
        Deployment,
        Endpoint,
        Gateway,
        KeyAuth,
        Listen,
        Share,
        Upstream,
    )
    from sluice.traffic.jwks import PLACEHOLDER_JWKS
    from sluice.traffic.tls import ensure_local_certificate, load_material
    from sluice.traffic.xds.builder import SnapshotBuilder

    def endpoint(name: str, port: int) -> Endpoint:
        deployment = Deployment(host(name), "blue", 1, 5000, 32, (Upstream("127.0.0.1", port),))
        auth = KeyAuth((KEY, "bench-secondary"))
        return Endpoint(host(name), 1, auth, (Share("blue", 100),), None, (deployment,))

    http_port, admin = inference.free_port(), inference.free_port()
    cert, key = ensure_local_certificate(work / "tls", DOMAIN)
    listen = Gateway(
        domain=DOMAIN,
        https=Listen("127.0.0.1", inference.free_port()),
        http=Listen("127.0.0.1", http_port),
        tls=load_material(cert, key),
        jwks=PLACEHOLDER_JWKS,
    )
    snapshot = SnapshotBuilder().build(listen, [endpoint(n, p) for n, p in ports.items()])
    snapshot.check()
    config = work / "envoy.json"
    config.write_text(json.dumps(static_bootstrap(snapshot, admin_port=admin)))
    envoy_binary = resolve_binary("envoy")  # the venv's (make setup), else on PATH
    if envoy_binary is None:
        raise SystemExit("envoy is needed for this benchmark: make setup")
    argv = [envoy_binary, "-c", str(config), "--concurrency", "1", "--disable-hot-restart"]
    with (work / "envoy.log").open("wb") as out:  # on this process's core, as wrk is
        envoy = subprocess.Popen(
            [*argv, "--log-level", "warning"], stdout=out, stderr=out, start_new_session=True
        )
    inference.wait_for(f"http://127.0.0.1:{admin}/ready", process=envoy)
    return envoy, http_port


def host(setting: str) -> str:
    """The endpoint (and host name) of a setting through the gateway."""
    return "b-" + setting.replace(" ", "-").replace(".", "-").replace("%", "pc")


def main() -> None:
    available = cores()
    server_core = available[-1]
    if len(available) >= 2:  # servers on the last core, wrk and Envoy on the first
        inference.SERVER_CPU = server_core
        pin(available[0])
        print(
            f"servers on CPU {available[-1]}, wrk and Envoy on CPU {available[0]}, and the"
            f" servers' writer processes on CPU {available[0]} but for the settings"
            f" ending '{ONE_CORE}'"
        )
    inference.WRK = inference.ensure_wrk()
    if inference.WRK is None:
        raise SystemExit("wrk is needed for this benchmark")
    model = inference.prepare_model()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    env = {**os.environ, "AZUREML_MODEL_DIR": str(model)}
    ports: dict[str, int] = {}
    argvs: dict[str, list[str]] = {}
    for name, extra in settings(WORK).items():
        ports[name] = inference.free_port()
        argvs[name] = [
            sys.executable, "-m", "sluice.inference", "--model", str(model / "model"),
            "--code", str(model / "code"), "--scoring-script", "score.py",
            "--port", str(ports[name]), "--max-queue", "64", "--log-format", "json", *extra,
        ]  # fmt: skip
    processes: dict[str, subprocess.Popen[bytes]] = {}
    sets = 0  # server sets started so far

    def fresh_servers() -> None:
        """Every setting's server (re)started on its port, ready, its writers placed and
        warmed up: a server process keeps its own speed for life (two identical ones differ
        by a few percent), so a run measures `SERVER_SETS` sets of them, not one."""
        nonlocal sets
        for process in processes.values():
            inference.stop(process)
        for name, argv in argvs.items():
            log = WORK / f"{name.replace(' ', '_')}-{sets}.log"
            processes[name] = inference.start(argv, env, log)
        for name, port in ports.items():
            inference.wait_for(f"http://127.0.0.1:{port}/ready", process=processes[name])
            if len(available) >= 2 and not name.endswith(ONE_CORE):
                for writer in psutil.Process(processes[name].pid).children(recursive=True):
                    os.sched_setaffinity(writer.pid, {available[0]})
            inference.wrk(f"http://127.0.0.1:{port}/score", 1)  # warm-up
        sets += 1

    fresh_servers()
    envoy, gateway_port = gateway(WORK, ports)
    routes: dict[str, tuple[str, dict[str, str]]] = {}  # "<path> <setting>" -> url, headers
    for name, port in ports.items():
        routes[f"direct {name}"] = (f"http://127.0.0.1:{port}/score", {})
        through = {"Host": f"{host(name)}.{DOMAIN}", "Authorization": f"Bearer {KEY}"}
        routes[f"gateway {name}"] = (f"http://127.0.0.1:{gateway_port}/score", through)
    envoy_process = psutil.Process(envoy.pid)

    def measure(route: str) -> Round:
        """One round of `route`: requests/s, the server's CPU us per request, Envoy's share
        of its core, and the host's speed probed on the servers' core before and after."""
        url, headers = routes[route]
        before_probe = host_speed(server_core)
        server = psutil.Process(processes[route.split(" ", 1)[1]].pid)
        for attempt in range(3):  # a loaded machine can time a request out (> 2 s): redo
            before_cpu = cpu(server)
            before_envoy = sum(envoy_process.cpu_times()[:2])
            try:
                result = inference.wrk(url, SECONDS, headers)
                break
            except RuntimeError as error:
                if attempt == 2:
                    raise
                print(f"{route}: round redone ({str(error).splitlines()[0]})", flush=True)
        (own, total), requests = cpu(server), result.rps * SECONDS
        envoy_share = (sum(envoy_process.cpu_times()[:2]) - before_envoy) / SECONDS
        after_probe = host_speed(server_core)
        return Round(result.rps, (total - before_cpu[1]) / requests * 1e6,
                     (own - before_cpu[0]) / requests * 1e6, envoy_share,
                     (before_probe, after_probe))  # fmt: skip

    every = max(1, ROUNDS // SERVER_SETS)  # rounds per set of servers

    def next_round(index: int) -> None:
        if index and index % every == 0:
            fresh_servers()

    try:
        for url, headers in routes.values():
            inference.wrk(url, 2, headers)  # warm-up; a routing error (non-2xx) stops here
        measures = {route: lambda r=route: measure(r) for route in routes}
        measured = interleave(ROUNDS, measures, before_round=next_round)
    finally:
        inference.stop(envoy)
        for process in processes.values():
            inference.stop(process)
    best = min(min(r.probes) for rounds_ in measured.values() for r in rounds_)
    for route, rounds_ in measured.items():
        print(f"rounds {route}: RPS {[round(r.rps) for r in rounds_]}, "
              f"server CPU us/request {[round(r.cpu) for r in rounds_]} "
              f"(its own process {[round(r.own) for r in rounds_]}), "
              f"host probe x best {[round(max(r.probes) / best, 2) for r in rounds_]}",
              flush=True)  # fmt: skip
    for path in ("direct", "gateway"):
        report(path, {name: measured[f"{path} {name}"] for name in ports}, best)
    added = overheads(WORK / "overhead")
    calm = [r.cpu for r in measured["direct off"] if quiet(r.probes, best)] or [float("nan")]
    off = min(calm)  # the least disturbed quiet round
    trusted = spread(calm).trusted
    print(f"\nthe features' own CPU per request, in-process (least of 3 x 20,000), against the"
          f" server's least CPU per request with both off ({off:.0f} us):")  # fmt: skip
    for name, us in added.items():
        share = us / off
        target = TARGETS[name]
        verdict = "MET" if share <= target else "MISSED"
        if not trusted:  # a slowed server's CPU per request is inflated: the share too small
            verdict = f"NOT SHOWN: off's quiet CPU rounds disagree or too few (says {verdict})"
        print(f"  {name}: +{us:.1f} us = {share:+.1%} (target <= {target:.0%}: {verdict})")
        if WRITER_SPLIT[name]:
            here, there = min(WRITER_SPLIT[name], key=sum)
            print(f"    of which the server's process +{here:.1f} us, its writer's +{there:.1f} us")
    spans = sum(1 for p in (WORK / "traces").glob("*.jsonl*") for _ in p.open())
    records = sum(1 for p in (WORK / "collected").rglob("*.jsonl") for _ in p.open())
    print(f"\nspans written: {spans:,}; collected records: {records:,}; server sets: {sets}")


def report(path: str, measured: dict[str, list[Round]], best: float) -> None:
    """The table of one path: each setting's requests/s against `off`'s, from the quiet
    rounds only (host probes within `QUIET` of the run's best before and after).

    The host slows our cores by up to 2x for seconds at a time, which no pairing of rounds
    cancels (two servers measured a second apart differ by +-30% in such a spell). A quiet
    round of a setting is set against the median of off's quiet rounds; ratios (around
    100%), not changes (around 0, where any spread is a huge share of the median):
    bench/stats.py flags them UNSTABLE past a 25-point spread."""
    calm = {
        name: [r for r in rounds_ if quiet(r.probes, best)] for name, rounds_ in measured.items()
    }
    total = len(measured["off"])
    print(f"\n{path}: 1 worker, wrk -t1 -c{inference.CONNECTIONS}, {total} x {SECONDS} s; "
          f"quiet rounds: host probes within {QUIET - 1:.0%} of the best"
          f" ({best * 1e3:.1f} ms)")  # fmt: skip
    gateway_note = " | Envoy's core share" if path == "gateway" else ""
    print(f"| setting | quiet rounds | requests/s | requests/s, % of off's "
          f"| server CPU us/request | CPU, % of off's | its own process's, % of off's"
          f"{gateway_note} | target (requests/s lost, median) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if gateway_note else "") + "---|")
    if len(calm["off"]) < 3:
        few = f"off: {len(calm['off'])} of {total}"
        print(f"| (all) | {few} | | | | | | NOT SHOWN: too few quiet rounds of off |")
        return
    off_rps = spread([r.rps for r in calm["off"]])
    off_cpu = spread([r.cpu for r in calm["off"]])
    off_own = spread([r.own for r in calm["off"]])
    floor = spread([r.rps / off_rps.median for r in calm["off-2"]] or [float("nan")])
    for name, rounds_ in calm.items():
        count = f"{len(rounds_)} of {total}"
        if len(rounds_) < 3:
            print(f"| {name} | {count} | | | | | | NOT SHOWN: too few quiet rounds |")
            continue
        rps = spread([r.rps for r in rounds_]).show("{:,.0f}")
        cpu = spread([r.cpu for r in rounds_]).show("{:.0f}")
        envoy = f" | {spread([r.envoy for r in rounds_]).show('{:.0%}')}" if gateway_note else ""
        if name == "off":
            print(f"| off | {count} | {rps} | | {cpu} | | {envoy} | |")
            continue
        ratio = spread([r.rps / off_rps.median for r in rounds_])
        cost = spread([r.cpu / off_cpu.median for r in rounds_])
        own = spread([r.own / off_own.median for r in rounds_])
        goal = target(name)
        if name == "off-2":
            verdict = "noise floor"
        else:
            said = "MET" if 1 - ratio.median <= goal else "MISSED"
            if not (ratio.trusted and floor.trusted and off_rps.trusted):
                said = f"NOT SHOWN: rounds disagree (median says {said})"
            verdict = f"<= {goal:.0%}: {said}"
        print(f"| {name} | {count} | {rps} | {ratio.show('{:.1%}')} | {cpu} "
              f"| {cost.show('{:.1%}')} | {own.show('{:.1%}')}{envoy} | {verdict} |")  # fmt: skip


if __name__ == "__main__":
    main()
