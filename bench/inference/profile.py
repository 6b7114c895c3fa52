"""Where one inference request's time goes: a flame graph and a split of the server's CPU.

`uv run --no-sync python bench/inference/profile.py [--seconds 10] [--no-flame]`
(py-spy is not a project dependency: `uv tool install py-spy` puts it on ~/.local/bin).

Serves the benchmark's model and score.py (run.py) with Sluice's server, pinned on
the last core as in run.py, drives it with wrk from the first core, and reports:

1. the split of the server's CPU time per request in one wrk round: run() (the
   server's own `sluice_inference_run_duration_seconds`, scraped before and after),
   the rest of its user time (HTTP, dispatch, metrics, JSON, GC: the Python
   around run()) and its system time (loopback TCP, epoll, signals). The times
   come from /proc/<pid>/stat, so they count what the server's core spent, not
   what the client saw;
2. with py-spy (unless --no-flame), a second round sampled at --rate (999 by
   default) into bench/inference/flame.svg (`.json`: speedscope, `.txt`: raw
   collapsed stacks). py-spy samples without stopping the process
   (--nonblocking); --native adds C frames, which py-spy cannot unwind at 999 Hz
   on 2 cores (it falls minutes behind): lower the rate with it.

The split needs a quiet machine: run()'s duration is wall time, and under load
wrk cannot keep the server busy (it then prints the server's core as far from
100% busy).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from shared import bench_module  # noqa: E402 - bench/shared.py, found through the line above

bench = bench_module("inference")

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process `pid`, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def run_seconds(metrics_port: int) -> tuple[float, float]:
    """(count, sum) of the server's run() durations, from its Prometheus metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    found = {}
    for part in ("count", "sum"):
        match = re.search(
            rf"^sluice_inference_run_duration_seconds_{part}\{{.*\}} (\S+)$", text, re.M
        )
        assert match, text
        found[part] = float(match.group(1))
    return found["count"], found["sum"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--no-flame", action="store_true", help="only the CPU split")
    parser.add_argument("--out", type=Path, default=HERE / "flame.svg")
    parser.add_argument("--rate", type=int, default=999, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="C frames too (slower to sample)")
    args = parser.parse_args()
    available = bench.cores()
    if len(available) >= 2:
        bench.SERVER_CPU = available[-1]
        bench.pin(available[0])
    bench.WRK = bench.ensure_wrk()
    work = bench.prepare_model()
    port, metrics_port = bench.free_port(), bench.free_port()
    argv = [
        sys.executable, "-m", "sluice.inference",
        "--model", str(work / "model"), "--code", str(work / "code"),
        "--scoring-script", "score.py", "--port", str(port), "--metrics-port", str(metrics_port),
        "--max-queue", "64", "--log-format", "json",
    ]  # fmt: skip
    env = {**os.environ, "AZUREML_MODEL_DIR": str(work)}
    server = bench.start(argv, env, work / "sluice-profile.log")
    try:
        bench.wait_for(f"http://127.0.0.1:{port}/ready", process=server)
        bench.peak(port, 2)  # warm-up: run() moves onto the event loop
        alone_us = 1e6 / bench.ceiling(bench.load_run(work), 2.0)
        split(server.pid, port, metrics_port, args.seconds, alone_us)
        if not args.no_flame:
            flame(server.pid, port, args.seconds, args.out, args.rate, args.native)
    finally:
        bench.stop(server)


def split(pid: int, port: int, metrics_port: int, seconds: int, alone_us: float) -> None:
    user0, system0 = cpu_seconds(pid)
    runs0, run_s0 = run_seconds(metrics_port)
    result = bench.peak(port, seconds)
    user1, system1 = cpu_seconds(pid)
    runs1, run_s1 = run_seconds(metrics_port)
    requests = runs1 - runs0
    per = 1e6 / requests  # microseconds per request, from seconds
    run_us = (run_s1 - run_s0) * per
    user_us, system_us = (user1 - user0) * per, (system1 - system0) * per
    busy = (user1 - user0 + system1 - system0) / seconds
    print(f"wrk: {result.rps:,.0f} requests/s; the server's core {busy:.0%} busy")
    print("| per request (server core) | us |")
    print("|---|---:|")
    print(f"| run() (alone in a loop, just before: {alone_us:.1f}) | {run_us:.1f} |")
    print(f"| Python outside run() (user time - run()) | {user_us - run_us:.1f} |")
    print(f"| kernel (system time) | {system_us:.1f} |")
    print(f"| total CPU | {user_us + system_us:.1f} |")


def flame(pid: int, port: int, seconds: int, out: Path, rate: int, native: bool) -> None:
    py_spy = shutil.which("py-spy") or str(Path.home() / ".local" / "bin" / "py-spy")
    command = [py_spy, "record", "--nonblocking", "-r", str(rate), "-d", str(seconds)]
    command += ["--native"] * native
    fmt = {".json": ["-f", "speedscope"], ".txt": ["-f", "raw"]}.get(out.suffix, [])
    recorder = subprocess.Popen([*command, *fmt, "-p", str(pid), "-o", str(out)])
    result = bench.peak(port, seconds)
    recorder.wait(120)
    print(f"under py-spy: {result.rps:,.0f} requests/s; flame graph in {out}")


if __name__ == "__main__":
    main()
