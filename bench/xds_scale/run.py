"""The control plane at scale: the first push of 1,000 (and 10,000) endpoints x 2 deployments.

A fresh Envoy takes the whole configuration from the ADS server (in-process, as in
bench/traffic): snapshot build, consistency check, push until Envoy ACKed every type,
then one endpoint's change. Twice per size, in the same run: with the bootstrap's
`stats_config` (what the platform runs) and without it (Envoy's default, every stat),
the baseline. Besides the times, which the machine's load moves, the CPU time and
resident memory of Envoy and of the controller (this process), which it moves far less.

    uv run --no-sync python bench/run.py xds_scale
    BENCH_XDS_ENDPOINTS=1000,10000 uv run --no-sync python bench/run.py xds_scale
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from sluice.common.log import configure_logging
from sluice.testing.stack import servers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared import bench_module  # bench/shared.py


def main() -> None:
    configure_logging(level="error")  # the in-process ADS server would log every push
    traffic = bench_module("traffic")
    sizes = [int(n) for n in os.environ.get("BENCH_XDS_ENDPOINTS", "1000").split(",")]
    rows = [
        "| endpoints x 2 | Envoy stats | build | check | push + ACK | total | one change "
        "| Envoy CPU | Envoy RSS | controller CPU | controller RSS |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-xds-") as tmp,
        servers(Path(tmp)) as (sup, _),
    ):
        for n in sizes:
            pushes = {}
            for all_stats in (True, False):
                p = asyncio.run(traffic.large_push(Path(tmp), sup, n, all_stats=all_stats))
                pushes[all_stats] = p
                rows.append(
                    f"| {n:,}{'' if p.instances else ' (no instances)'} "
                    f"| {'all (default)' if all_stats else 'stats_config'} "
                    f"| {p.build_ms:,.0f} ms | {p.check_ms:,.0f} ms | {p.push_ms:,.0f} ms "
                    f"| {p.total_ms:,.0f} ms | {p.change_ms:,.0f} ms | {p.envoy_cpu_s:.2f} s "
                    f"| {p.envoy_rss_mib:,.0f} MiB | {p.controller_cpu_s:.2f} s "
                    f"| {p.controller_rss_mib:,.0f} MiB |"
                )
                print(rows[-1], flush=True)
            base, ours = pushes[True], pushes[False]
            rows.append(
                f"| {n:,} | ratio | | | {ours.push_ms / base.push_ms:.2f}x | "
                f"{ours.total_ms / base.total_ms:.2f}x | | "
                f"{ours.envoy_cpu_s / base.envoy_cpu_s:.2f}x "
                f"| {ours.envoy_rss_mib / base.envoy_rss_mib:.2f}x | | |"
            )
    print("\n".join(rows), flush=True)
