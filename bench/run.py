"""Run the benchmarks: `make bench` (all) or `python bench/run.py inference traffic` (some).

Each benchmark lives in bench/<name>/run.py with a `main()` that measures its
figure and a baseline in the same run and prints the ratio (machines here are
noisy, so absolute numbers from different runs are not compared). Each run
starts and ends with a line naming the machine and its load (bench/stats.py):
a figure taken at load 8 on 2 cores is a ratio, not a speed.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from stats import machine  # noqa: E402 - bench/stats.py, found through the line above


def available() -> list[str]:
    return sorted(p.parent.name for p in BENCH.glob("*/run.py"))


def run(name: str) -> None:
    path = BENCH / name / "run.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no benchmark {name!r}; have: {', '.join(available())}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    print(f"=== bench/{name} on {machine()}", flush=True)
    started = time.monotonic()
    module.main()
    print(f"=== bench/{name} done in {time.monotonic() - started:.0f}s; {machine()}", flush=True)


def main() -> None:
    names = sys.argv[1:] or available()
    unknown = set(names) - set(available())
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; have: {', '.join(available())}")
    for name in names:
        run(name)


if __name__ == "__main__":
    main()
