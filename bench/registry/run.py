"""Registry latency at 10 and at 1,000 endpoints (x 2 deployments each).

Starts real nats-server, SecantusDB and the registry process on free ports,
then, for a small and a large registry, measures per-call latency of create
(endpoint + 2 deployments), get and a full paginated list through the gRPC
client. The ratio large/small shows how cost grows with size: get should stay
flat (an `_id` lookup); list grows with what it returns, per item it should not.

It runs twice: SecantusDB in memory (the baseline: no disk, no fsync) and on
disk with `--sync-on-commit` as `sluice up` runs it (every acknowledged write
fsynced, issue 10); the ratio durable/in-memory is what durability costs.

Both run BENCH_ROUNDS times (default 3), interleaved, each round on a fresh platform;
figures are median (min-max) over rounds of each round's median per call, and the
ratios are taken round by round. A round at 1,000 endpoints takes minutes on a busy
machine: BENCH_REGISTRY_LARGE (default 1000) sets the large size.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sluice.common.resources import (
    ArtifactRef,
    CodeConfiguration,
    ModelRef,
    OnlineDeploymentSpec,
    OnlineEndpointSpec,
)
from sluice.sdk.client import RegistryClient
from sluice.testing.stack import servers, start_services

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stats import interleave, ratios, rounds, spread  # bench/stats.py

SIZES = (10, int(os.environ.get("BENCH_REGISTRY_LARGE", "1000")))
ROUNDS = rounds(3)
SAMPLES = 200  # get calls per size


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def fill(client: RegistryClient, start: int, stop: int, model: ArtifactRef) -> list[float]:
    """Create endpoints start..stop-1 with blue and green; per-endpoint create latency (ms)."""
    times = []
    for i in range(start, stop):
        name = f"bench-{i:05d}"

        def create(name: str = name) -> None:
            client.create_online_endpoint(OnlineEndpointSpec(name=name))
            for dep in ("blue", "green"):
                client.create_online_deployment(
                    OnlineDeploymentSpec(
                        name=dep,
                        endpoint_name=name,
                        model=ModelRef(artifact=model),
                        code_configuration=CodeConfiguration(),
                    )
                )

        times.append(timed(create))
    return times


def measure(client: RegistryClient, model: ArtifactRef) -> list[tuple[float, ...]]:
    rows: list[tuple[float, ...]] = []
    created = 0
    for size in SIZES:
        creates = fill(client, created, size, model)
        created = size
        gets = [
            timed(lambda i=i, n=size: client.get_online_endpoint(f"bench-{i % n:05d}"))
            for i in range(SAMPLES)
        ]
        lists = [timed(client.list_online_endpoints) for _ in range(5)]
        listed = len(client.list_online_endpoints())
        deps = timed(lambda: client.list_online_deployments("bench-00000"))
        medians = (statistics.median(creates), statistics.median(gets), statistics.median(lists))
        rows.append((size, *medians, listed, deps))
    return rows


def run(*, durable: bool) -> list[tuple[float, ...]]:
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp,
        servers(Path(tmp), mongo_data=Path(tmp) / "mongodb" if durable else None) as (
            sup,
            settings,
        ),
    ):
        settings = start_services(sup, settings, ["registry"])
        (Path(tmp) / "model").mkdir()
        (Path(tmp) / "model/model.pkl").write_bytes(b"bench model")
        with RegistryClient(f"127.0.0.1:{settings.ports.registry}", "bench") as client:
            return measure(client, client.upload(Path(tmp) / "model"))


COLUMNS = ("create ms", "get ms", "list ms", "list/item ms", "deps list ms")


def columns(row: tuple[float, ...]) -> list[float]:
    """One round at one size: create, get, list, list per listed item, deployments list."""
    _, create, get, list_ms, listed, deps = row
    return [create, get, list_ms, list_ms / listed, deps]


def report(title: str, per_round: list[list[tuple[float, ...]]]) -> None:
    """per_round[r][s]: round r's row at SIZES[s]."""
    print(f"{title}: median (min-max) over rounds")
    print(f"| endpoints | {' | '.join(COLUMNS)} |")
    print("|---:|" + "---:|" * len(COLUMNS))
    for s, size in enumerate(SIZES):
        cells = zip(*(columns(r[s]) for r in per_round), strict=True)
        print(f"| {size} | " + " | ".join(spread(c).show() for c in cells) + " |")
    small, large = ([columns(r[s]) for r in per_round] for s in (0, 1))
    for i, label in ((0, "create"), (1, "get"), (3, "list per item")):
        growth = ratios([x[i] for x in large], [x[i] for x in small])
        print(f"ratio {SIZES[1]}/{SIZES[0]} endpoints, per round: {label} {spread(growth).show()}")


def main() -> None:
    runs = interleave(
        ROUNDS, {"memory": lambda: run(durable=False), "durable": lambda: run(durable=True)}
    )
    report("SecantusDB in memory (baseline)", runs["memory"])
    report("SecantusDB on disk, --sync-on-commit, j:true (as `sluice up`)", runs["durable"])
    for s, size in enumerate(SIZES):
        for i, label in ((1, "create"), (2, "get")):
            cost = ratios([r[s][i] for r in runs["durable"]], [r[s][i] for r in runs["memory"]])
            print(
                f"durable / in memory at {size} endpoints, per round: {label} {spread(cost).show()}"
            )


if __name__ == "__main__":
    main()
