"""One change to the inference server, measured: this checkout's server against another's.

`uv run --no-sync python bench/inference/ab.py BASE [--rounds 5] [--seconds 5] [--trace R]`

BASE is another checkout of the repository (e.g. `git worktree add /tmp/base main`).
Both servers serve the benchmark's model and score.py (run.py) at once, pinned on
the same core (the last), the base one importing `sluice.inference` and
`sluice.common` from BASE's services/inference/src and libs/common/src (PYTHONPATH
comes before this environment's editable install). wrk drives them from the first
core in alternating rounds, and the report is the ratio this/base round by round, as
median and spread (requests/s, and the server's CPU time per request, which a loaded
machine moves less): on a shared machine a burst from another process then hits one
pair of rounds, not one server. `--trace R`: both servers trace at sampling ratio R
(spans as JSON lines), to measure a change to tracing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from shared import bench_module  # noqa: E402 - bench/shared.py, found through the line above

bench = bench_module("inference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="another checkout of the repository")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--trace", type=float, help="both servers trace at this sampling ratio")
    args = parser.parse_args()
    base_src = args.base.resolve() / "services" / "inference" / "src"
    if not (base_src / "sluice" / "inference" / "app.py").is_file():
        raise SystemExit(f"{args.base} is not a checkout of the repository (no {base_src})")
    base_path = f"{base_src}{os.pathsep}{args.base.resolve() / 'libs' / 'common' / 'src'}"
    available = bench.cores()
    if len(available) >= 2:
        bench.SERVER_CPU = available[-1]
        bench.pin(available[0])
    bench.WRK = bench.ensure_wrk()
    work = bench.prepare_model()
    env = {**os.environ, "AZUREML_MODEL_DIR": str(work)}
    servers = {}
    for name, extra in (("base", {"PYTHONPATH": base_path}), ("this", {})):
        port = bench.free_port()
        tracing = [] if args.trace is None else [
            "--trace-dir", str(work / f"ab-traces-{name}"),
            "--trace-sampling-ratio", str(args.trace),
        ]  # fmt: skip
        argv = [
            sys.executable, "-m", "sluice.inference",
            "--model", str(work / "model"), "--code", str(work / "code"),
            "--scoring-script", "score.py", "--port", str(port),
            "--max-queue", "64", "--log-format", "json", *tracing,
        ]  # fmt: skip
        servers[name] = (port, bench.start(argv, {**env, **extra}, work / f"ab-{name}.log"))
    try:
        for port, process in servers.values():
            bench.wait_for(f"http://127.0.0.1:{port}/ready", process=process)
            bench.peak(port, 2)  # warm-up: run() moves onto the event loop
        rps: dict[str, list[float]] = {"base": [], "this": []}
        cpu: dict[str, list[float]] = {"base": [], "this": []}  # us per request
        for _ in range(args.rounds):
            for name, (port, process) in servers.items():
                before = sum(psutil.Process(process.pid).cpu_times()[:2])
                result = bench.peak(port, args.seconds)
                used = sum(psutil.Process(process.pid).cpu_times()[:2]) - before
                rps[name].append(result.rps)
                cpu[name].append(used / (result.rps * args.seconds) * 1e6)
    finally:
        for _port, process in servers.values():
            bench.stop(process)
    for name, values in rps.items():
        print(f"RPS {name}: {[round(v) for v in values]}")
        print(f"CPU us/request {name}: {[round(v) for v in cpu[name]]}")
    ratios = [t / b for t, b in zip(rps["this"], rps["base"], strict=True)]
    print("this / base RPS:", bench.spread(ratios).show("{:.3f}x"))
    costs = [t / b for t, b in zip(cpu["this"], cpu["base"], strict=True)]
    print("this / base CPU per request:", bench.spread(costs).show("{:.3f}x"))


if __name__ == "__main__":
    main()
