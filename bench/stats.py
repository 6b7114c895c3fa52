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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TRUST_SPREAD = 0.25  # (max - min) / median above this: the rounds disagree, say so


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    rounds: int

    @property
    def relative(self) -> float:
        return (self.high - self.low) / self.median if self.median else 0.0

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


def pin(cpu: int) -> None:
    """Keep this process (and the children it starts from now on) on one core."""
    os.sched_setaffinity(0, {cpu})
