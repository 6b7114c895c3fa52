"""What an acknowledged-means-durable write costs: SecantusDB with `--sync-on-commit`
and `j: true` against the same server without them, per write, in one run.

Three SecantusDB servers on disk run side by side, each with one PyMongo client:

- durable: `--sync-on-commit`, writes with `w: "majority", j: true` (as `sluice up`
  and every service run it, issue 10);
- journal asked only: no `--sync-on-commit`, writes with `j: true` (what a client
  alone can ask for; on SecantusDB it does not wait for an fsync);
- baseline: no `--sync-on-commit`, the default write concern.

Each round runs, against each server in turn, WRITES single-document updates and
WRITES transactions of a document plus its outbox entry (what one registry write
commits); rounds alternate so load from other processes hits all three alike.
Figures are medians per write over all rounds; the ratio is durable / baseline.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from pymongo import MongoClient

from sluice.common.components import mongo_spec
from sluice.common.mongo import Document
from sluice.common.supervisor import Supervisor, free_port

ROUNDS = 5
WRITES = 30
CONFIGS = {
    "durable (--sync-on-commit, j:true, w:majority)": (True, {"w": "majority", "journal": True}),
    "j:true only (no --sync-on-commit)": (False, {"journal": True}),
    "baseline (no --sync-on-commit, default concern)": (False, {}),
}


def start(sup: Supervisor, root: Path, name: str, sync: bool) -> str:
    spec = mongo_spec(host="127.0.0.1", port=free_port(), data_dir=root / name, name=name)
    if not sync:
        spec = dataclasses.replace(spec, argv=[a for a in spec.argv if a != "--sync-on-commit"])
    (root / name).mkdir()
    return sup.start(spec).address


def updates(client: MongoClient[Document], samples: list[float]) -> None:
    coll = client.bench.docs
    for i in range(WRITES):
        started = time.perf_counter()
        coll.update_one({"_id": i % 5}, {"$inc": {"n": 1}}, upsert=True)
        samples.append((time.perf_counter() - started) * 1000)


def transactions(client: MongoClient[Document], samples: list[float], offset: int) -> None:
    db = client.bench
    for i in range(WRITES):
        started = time.perf_counter()
        with client.start_session() as session, session.start_transaction():
            db.resources.insert_one({"_id": offset + i, "spec": {"n": i}}, session=session)
            db.outbox.insert_one({"_id": f"e{offset + i}", "body": "{}"}, session=session)
        samples.append((time.perf_counter() - started) * 1000)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sluice-bench-durability-") as tmp:
        sup = Supervisor(Path(tmp) / "logs")
        try:
            clients = {
                title: MongoClient(start(sup, Path(tmp), f"m{n}", sync), **concern)
                for n, (title, (sync, concern)) in enumerate(CONFIGS.items())
            }
            update_ms: dict[str, list[float]] = {title: [] for title in CONFIGS}
            tx_ms: dict[str, list[float]] = {title: [] for title in CONFIGS}
            for client in clients.values():  # warm-up: connections, collections
                updates(client, [])
                transactions(client, [], 10_000)
            for round_ in range(ROUNDS):
                for title, client in clients.items():
                    updates(client, update_ms[title])
                    transactions(client, tx_ms[title], round_ * WRITES)
            for client in clients.values():
                client.close()
        finally:
            sup.stop_all()
    print(f"{ROUNDS} rounds x {WRITES} writes per server, medians (p90) in ms")
    print(f"{'server':<50} {'update_one':>18} {'transaction (doc + outbox)':>28}")
    for title in CONFIGS:
        u, t = update_ms[title], tx_ms[title]
        print(f"{title:<50} {_fmt(u):>18} {_fmt(t):>28}")
    durable, base = next(iter(CONFIGS)), list(CONFIGS)[-1]
    print(
        "durable / baseline: update_one "
        f"x{statistics.median(update_ms[durable]) / statistics.median(update_ms[base]):.2f}, "
        f"transaction x{statistics.median(tx_ms[durable]) / statistics.median(tx_ms[base]):.2f}"
    )


def _fmt(samples: list[float]) -> str:
    p90 = statistics.quantiles(samples, n=10)[-1]
    return f"{statistics.median(samples):.2f} ({p90:.2f})"


if __name__ == "__main__":
    main()
