"""The control plane at scale: the first push of 1,000 (and 10,000) endpoints x 2 deployments.

A fresh Envoy takes the whole configuration from the ADS server (in-process, as in
bench/traffic): snapshot build, consistency check, push until Envoy ACKed every type,
then one endpoint's change. Per size, rounds interleaved (bench/stats.py): Envoy with the
bootstrap's `stats_config` (what the platform runs) and without it (Envoy's default,
every stat), the baseline; median (min-max) of the rounds. Besides the times, which the
machine's load moves, the CPU time and resident memory of Envoy and of the controller
(this process), which it moves far less, and where the push's time goes: from the
snapshot's publication, when each xDS type was first sent and when Envoy last ACKed it.

    uv run --no-sync python bench/run.py xds_scale
    BENCH_XDS_ENDPOINTS=1000,10000 BENCH_ROUNDS=1 uv run --no-sync python bench/run.py xds_scale
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from sluice.common.log import configure_logging
from sluice.testing.stack import servers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared import bench_module  # bench/shared.py
from stats import interleave, ratios, rounds, spread  # bench/stats.py

COLUMNS = (
    "| endpoints x 2 | Envoy stats | build | check | push + ACK | total | one change "
    "| Envoy CPU | Envoy RSS | controller CPU | controller RSS | push phases (ms, median round) |"
)


def ms(values: list[float]) -> str:
    s = spread(values)
    return f"{s.median:,.0f} ({s.low:,.0f}-{s.high:,.0f})" if s.rounds > 1 else f"{s.median:,.0f}"


def row(n: int, label: str, pushes: list[Any]) -> str:
    def med(attr: str) -> float:
        return statistics.median(getattr(p, attr) for p in pushes)

    median_round = sorted(pushes, key=lambda p: p.total_ms)[len(pushes) // 2]
    return (
        f"| {n:,}{'' if pushes[0].instances else ' (no instances)'} | {label} "
        f"| {ms([p.build_ms for p in pushes])} | {ms([p.check_ms for p in pushes])} "
        f"| {ms([p.push_ms for p in pushes])} | {ms([p.total_ms for p in pushes])} "
        f"| {ms([p.change_ms for p in pushes])} | {med('envoy_cpu_s'):.2f} s "
        f"| {med('envoy_rss_mib'):,.0f} MiB | {med('controller_cpu_s'):.2f} s "
        f"| {med('controller_rss_mib'):,.0f} MiB | {median_round.phases} |"
    )


def main() -> None:
    configure_logging(level="error")  # the in-process ADS server would log every push
    traffic = bench_module("traffic")
    sizes = [int(n) for n in os.environ.get("BENCH_XDS_ENDPOINTS", "1000").split(",")]
    n_rounds = rounds()
    rows = [COLUMNS, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-xds-") as tmp,
        servers(Path(tmp)) as (sup, _),
    ):
        for n in sizes:

            def measure(all_stats: bool, n: int = n) -> Any:
                push = asyncio.run(traffic.large_push(Path(tmp), sup, n, all_stats=all_stats))
                print(
                    f"  {n:,} {'all stats' if all_stats else 'stats_config'}: total "
                    f"{push.total_ms:,.0f} ms (build {push.build_ms:,.0f}, push "
                    f"{push.push_ms:,.0f}: {push.phases}), one change {push.change_ms:,.0f} ms, "
                    f"load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
                return push

            got = interleave(
                n_rounds, {"all": lambda: measure(True), "ours": lambda: measure(False)}
            )
            base, ours = got["all"], got["ours"]
            rows.append(row(n, "all (default)", base))
            rows.append(row(n, "stats_config", ours))
            push_ratio = spread(ratios([p.push_ms for p in ours], [p.push_ms for p in base]))
            total_ratio = spread(ratios([p.total_ms for p in ours], [p.total_ms for p in base]))
            cpu = spread(ratios([p.envoy_cpu_s for p in ours], [p.envoy_cpu_s for p in base]))
            rss = spread(ratios([p.envoy_rss_mib for p in ours], [p.envoy_rss_mib for p in base]))
            rows.append(
                f"| {n:,} | ratio | | | {push_ratio.median:.2f}x | {total_ratio.median:.2f}x | "
                f"| **{cpu.median:.2f}x** | **{rss.median:.2f}x** | | | |"
            )
    print("\n".join(rows), flush=True)
