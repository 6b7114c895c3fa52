"""One change to the inference server, measured: this checkout's server against another's.

`uv run --no-sync python bench/inference/ab.py BASE [--rounds 5] [--seconds 5]`

BASE is another checkout of the repository (e.g. `git worktree add /tmp/base main`).
Both servers serve the benchmark's model and score.py (run.py) at once, pinned on
the same core (the last), the base one importing `sluice.inference` from
BASE/services/inference/src (PYTHONPATH comes before this environment's editable
install). wrk drives them from the first core in alternating rounds, and the report
is the ratio this/base round by round, as median and spread: on a shared machine a
burst from another process then hits one pair of rounds, not one server.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from shared import bench_module  # noqa: E402 - bench/shared.py, found through the line above

bench = bench_module("inference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="another checkout of the repository")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    base_src = args.base.resolve() / "services" / "inference" / "src"
    if not (base_src / "sluice" / "inference" / "app.py").is_file():
        raise SystemExit(f"{args.base} is not a checkout of the repository (no {base_src})")
    available = bench.cores()
    if len(available) >= 2:
        bench.SERVER_CPU = available[-1]
        bench.pin(available[0])
    bench.WRK = bench.ensure_wrk()
    work = bench.prepare_model()
    env = {**os.environ, "AZUREML_MODEL_DIR": str(work)}
    servers = {}
    for name, extra in (("base", {"PYTHONPATH": str(base_src)}), ("this", {})):
        port = bench.free_port()
        argv = [
            sys.executable, "-m", "sluice.inference",
            "--model", str(work / "model"), "--code", str(work / "code"),
            "--scoring-script", "score.py", "--port", str(port),
            "--max-queue", "64", "--log-format", "json",
        ]  # fmt: skip
        servers[name] = (port, bench.start(argv, {**env, **extra}, work / f"ab-{name}.log"))
    try:
        for port, process in servers.values():
            bench.wait_for(f"http://127.0.0.1:{port}/ready", process=process)
            bench.peak(port, 2)  # warm-up: run() moves onto the event loop
        rps: dict[str, list[float]] = {"base": [], "this": []}
        for _ in range(args.rounds):
            for name, (port, _process) in servers.items():
                rps[name].append(bench.peak(port, args.seconds).rps)
    finally:
        for _port, process in servers.values():
            bench.stop(process)
    for name, values in rps.items():
        print(f"RPS {name}: {[round(v) for v in values]}")
    ratios = [t / b for t, b in zip(rps["this"], rps["base"], strict=True)]
    print("this / base RPS:", bench.spread(ratios).show("{:.3f}x"))


if __name__ == "__main__":
    main()
