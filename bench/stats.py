"""What every benchmark reports besides its figure: the machine, and how much rounds agree.

A figure from one round on a shared machine says little: each benchmark runs
several rounds interleaved with its baseline and reports the median with the
spread (min-max) of the rounds. `Spread.trusted` is False when the rounds
disagree by more than `TRUST_SPREAD` of the median; the report says so instead of
quoting the median as if it were a measurement.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

TRUST_SPREAD = 0.25  # (max - min) / median above this: the rounds disagree, say so


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    rounds: int

    @property
    def relative(self) -> float:
        if self.high == self.low:
            return 0.0
        return (self.high - self.low) / abs(self.median) if self.median else float("inf")

    @property
    def trusted(self) -> bool:
        return self.rounds >= 3 and self.relative <= TRUST_SPREAD

    def show(self, fmt: str = "{:,.2f}") -> str:
        """`median (min-max, n rounds)`, with a warning when the rounds disagree."""
        text = (
            f"{fmt.format(self.median)} ({fmt.format(self.low)}-{fmt.format(self.high)}, "
            f"{self.rounds} rounds)"
        )
        if not self.trusted:
            text += f" UNSTABLE: spread {self.relative:.0%} > {TRUST_SPREAD:.0%}"
        return text


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("no rounds")
    return Spread(statistics.median(values), min(values), max(values), len(values))


def rounds(default: int = 3) -> int:
    """How many rounds a benchmark runs: `BENCH_ROUNDS`, else its default (3 at least for a
    spread worth the name; fewer are allowed for a quick try and reported as UNSTABLE)."""
    return int(os.environ.get("BENCH_ROUNDS", str(default)))


def interleave(
    n: int,
    measures: Mapping[str, Callable[[], T]],
    before_round: Callable[[int], None] | None = None,
) -> dict[str, list[T]]:
    """`n` rounds, each running every measure once; the order rotates from round to round,
    so load that drifts during a run (and whichever goes first) hits every measure alike.
    `before_round(r)` is called before round r (e.g. to start fresh servers)."""
    results: dict[str, list[T]] = {name: [] for name in measures}
    names = list(measures)
    for r in range(n):
        if before_round is not None:
            before_round(r)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            results[name].append(measures[name]())
    return results


def ratios(figure: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Round by round figure / baseline: each round's ratio against its own baseline."""
    return [f / b for f, b in zip(figure, baseline, strict=True)]


def machine() -> str:
    """CPU model, the machine's cores and the load average, in one line."""
    model = platform.processor() or platform.machine()
    try:
        with Path("/proc/cpuinfo").open() as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, load average {load}"


def cores() -> list[int]:
    """The cores this process may run on, sorted."""
    return sorted(os.sched_getaffinity(0))


PROBE_LOOPS = 400_000  # ~40 ms of pure Python on these machines at full speed
QUIET = 1.10  # a probe within 10% of the run's fastest: the host ran us at full speed


def host_speed(cpu: int) -> float:
    """Seconds a fixed pure-Python loop takes on `cpu` right now (this process moved there
    for it, then back). On a shared host the same loop takes from 1x to 2x its best time
    from one second to the next (other tenants on the same physical cores); a benchmark
    probes before and after each measurement and keeps, as `quiet`, those whose probes
    are both within `QUIET` of the run's best."""
    home = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        started = time.perf_counter()
        total = 0
        for i in range(PROBE_LOOPS):
            total += i
        return time.perf_counter() - started
    finally:
        os.sched_setaffinity(0, home)


def quiet(probes: Sequence[float], best: float) -> bool:
    """True when every probe around a measurement ran at (nearly) the run's best speed."""
    return max(probes) <= best * QUIET


def pin(cpu: int) -> None:
    """Keep this process (and the children it starts from now on) on one core."""
    os.sched_setaffinity(0, {cpu})
