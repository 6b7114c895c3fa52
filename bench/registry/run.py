"""Registry latency at 10 and at 1,000 endpoints (x 2 deployments each).

Starts real nats-server, SecantusDB and the registry process on free ports,
then, for a small and a large registry, measures per-call latency of create
(endpoint + 2 deployments), get and a full paginated list through the gRPC
client. The ratio large/small shows how cost grows with size: get should stay
flat (an `_id` lookup); list grows with what it returns, per item it should not.

It runs twice: SecantusDB in memory (the baseline: no disk, no fsync) and on
disk with `--sync-on-commit` as `sluice up` runs it (every acknowledged write
fsynced, issue 10); the ratio durable/in-memory is what durability costs.
"""

from __future__ import annotations

import statistics
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

SIZES = (10, 1000)
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


def report(title: str, rows: list[tuple[float, ...]]) -> None:
    print(title)
    header = ("endpoints", "create ms", "get ms", "list ms", "list/item ms", "deps list ms")
    print(" ".join(f"{h:>13}" for h in header))
    for size, create, get, list_ms, listed, deps in rows:
        cells = (
            int(size),
            f"{create:.2f}",
            f"{get:.2f}",
            f"{list_ms:.1f}",
            f"{list_ms / listed:.3f}",
        )
        print(" ".join(f"{c:>13}" for c in (*cells, f"{deps:.2f}")))
    small, large = rows
    per_item = (large[3] / large[4]) / (small[3] / small[4])
    print(
        f"ratio {large[0]}/{small[0]} endpoints: create x{large[1] / small[1]:.2f}, "
        f"get x{large[2] / small[2]:.2f}, list per item x{per_item:.2f}"
    )


def main() -> None:
    memory = run(durable=False)
    durable = run(durable=True)
    report("SecantusDB in memory (baseline)", memory)
    report("SecantusDB on disk, --sync-on-commit, j:true (as `sluice up`)", durable)
    for (size, create, get, *_), (_, d_create, d_get, *_) in zip(memory, durable, strict=True):
        print(
            f"durable / in memory at {int(size)} endpoints: create x{d_create / create:.2f}, "
            f"get x{d_get / get:.2f}"
        )


if __name__ == "__main__":
    main()
