"""A/B of the inference server's code, by hand: the server CPU per request of several
checkouts side by side, each against `off` measured in the same round.

    uv run --no-sync python bench/tracing/ab.py [--rounds 8] [--seconds 3] \\
        off=.:off now=.:tracing before=/tmp/before:tracing one-core=.:tracing1

Each `name=checkout:mode` starts one `python -m sluice.inference` with bench/inference's
Ridge model, importing `sluice.inference` and `sluice.common` from that checkout's source
folders (PYTHONPATH before the venv's own); mode `off`, `tracing` (spans at 100%, the
writer process moved to the other core) or `tracing1` (the writer left on the server's
core). The first one is the baseline. Servers run on the last core, wrk (1 thread, 16
connections) on the first; every round measures every server once, in an order that
rotates. Printed per server: the median CPU per request (user + system of the server's
own process), the median of its paired differences with the baseline's
figure of the same round (what to compare: the machine's drift cancels), and its
requests/s as a share of the baseline's, round by round.

Two identical servers can differ by up to ~5 us per request (bench/README.md, tracing):
give a variant two servers before trusting a difference of a few microseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from shared import bench_module  # noqa: E402 - bench/shared.py
from stats import cores, pin  # noqa: E402 - bench/stats.py, found through the line above

inference: Any = bench_module("inference")
FIRST_PORT = 18800


def start(name: str, checkout: Path, mode: str, port: int, work: Path, core: int) -> Any:
    source = [checkout / "services" / "inference" / "src", checkout / "libs" / "common" / "src"]
    env = {
        **os.environ,
        "AZUREML_MODEL_DIR": str(work / "model"),
        "PYTHONPATH": os.pathsep.join(str(folder) for folder in source),
    }
    argv = [
        sys.executable, "-m", "sluice.inference",
        "--model", str(work / "model"), "--code", str(work / "code"),
        "--scoring-script", "score.py", "--port", str(port), "--max-queue", "64",
        "--log-format", "json",
    ]  # fmt: skip
    if mode.startswith("tracing"):
        argv += ["--trace-dir", str(work / "ab-traces" / name), "--trace-sampling-ratio", "1.0"]
    log = (work / f"ab-{name}.log").open("wb")
    return subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),  # its writer process too
    )


def cpu_seconds(process: Any) -> float:
    """User + system seconds of the server's own process (not its writer)."""
    return float(sum(psutil.Process(process.pid).cpu_times()[:2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("servers", nargs="+", help="name=checkout:off|tracing|tracing1")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    available = cores()
    server_core, load_core = available[-1], available[0]
    inference.WRK = inference.ensure_wrk()
    if inference.WRK is None:
        raise SystemExit("wrk is needed for this benchmark")
    work = inference.prepare_model()
    servers: list[tuple[str, int, Any]] = []
    try:
        for i, spec in enumerate(args.servers):
            name, _, where = spec.partition("=")
            checkout, _, mode = where.rpartition(":")
            port = FIRST_PORT + i
            servers.append((name, port, start(name, Path(checkout), mode, port, work, server_core)))
        pin(load_core)  # this process and wrk
        for (_, port, process), spec in zip(servers, args.servers, strict=True):
            inference.wait_for(f"http://127.0.0.1:{port}/ready", process=process)
            if spec.endswith(":tracing"):  # its writer on the other core
                for child in psutil.Process(process.pid).children(recursive=True):
                    os.sched_setaffinity(child.pid, {load_core})
            inference.wrk(f"http://127.0.0.1:{port}/score", 2)  # warm-up
        measured: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in servers}
        for r in range(args.rounds):
            turn = r % len(servers)
            for name, port, process in servers[turn:] + servers[:turn]:
                before = cpu_seconds(process)
                rps = inference.wrk(f"http://127.0.0.1:{port}/score", args.seconds).rps
                used = cpu_seconds(process) - before
                measured[name].append((used / (rps * args.seconds) * 1e6, rps))
            print(
                f"round {r + 1}: "
                + "  ".join(f"{n} {v[-1][0]:.0f} us" for n, v in measured.items()),
                flush=True,
            )
    finally:
        for _, _, process in servers:
            process.terminate()
        for _, _, process in servers:
            process.wait(10)
    baseline = measured[servers[0][0]]
    print(f"\n{args.rounds} rounds x {args.seconds} s; baseline {servers[0][0]}")
    for name, rounds_ in measured.items():
        paired = [us - base_us for (us, _), (base_us, _) in zip(rounds_, baseline, strict=True)]
        shares = [rps / base_rps for (_, rps), (_, base_rps) in zip(rounds_, baseline, strict=True)]
        print(
            f"{name:>12}: {statistics.median(us for us, _ in rounds_):6.1f} us per request, "
            f"paired difference {statistics.median(paired):+5.1f} us "
            f"({min(paired):+.1f} to {max(paired):+.1f}), "
            f"requests/s {statistics.median(shares):.1%} of the baseline's"
        )


if __name__ == "__main__":
    main()
