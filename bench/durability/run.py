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
commits); rounds (BENCH_ROUNDS, default 5) interleave the servers so load from other
processes hits all three alike. Each round gives each server its median per write;
the figures are median (min-max) of those over rounds, and the ratio durable /
baseline is taken round by round.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pymongo import MongoClient

from sluice.common.components import mongo_spec
from sluice.common.mongo import Document
from sluice.common.supervisor import Supervisor, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stats import interleave, ratios, rounds, spread  # bench/stats.py

ROUNDS = rounds(5)
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


def updates(client: MongoClient[Document]) -> float:
    """Median ms of WRITES single-document updates."""
    coll = client.bench.docs
    samples = []
    for i in range(WRITES):
        started = time.perf_counter()
        coll.update_one({"_id": i % 5}, {"$inc": {"n": 1}}, upsert=True)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def transactions(client: MongoClient[Document], ids: itertools.count[int]) -> float:
    """Median ms of WRITES transactions: a document plus its outbox entry."""
    db = client.bench
    samples = []
    for i in range(WRITES):
        started = time.perf_counter()
        with client.start_session() as session, session.start_transaction():
            n = next(ids)
            db.resources.insert_one({"_id": n, "spec": {"n": i}}, session=session)
            db.outbox.insert_one({"_id": f"e{n}", "body": "{}"}, session=session)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sluice-bench-durability-") as tmp:
        sup = Supervisor(Path(tmp) / "logs")
        try:
            clients = {
                title: MongoClient(start(sup, Path(tmp), f"m{n}", sync), **concern)
                for n, (title, (sync, concern)) in enumerate(CONFIGS.items())
            }
            ids = itertools.count()
            for client in clients.values():  # warm-up: connections, collections
                updates(client)
                transactions(client, ids)
            results = interleave(
                ROUNDS,
                {
                    title: lambda c=client: (updates(c), transactions(c, ids))
                    for title, client in clients.items()
                },
            )
            for client in clients.values():
                client.close()
        finally:
            sup.stop_all()
    print(f"{ROUNDS} interleaved rounds x {WRITES} writes per server; per write, ms:")
    print("median (min-max) over rounds of each round's median")
    print("| server | update_one | transaction (doc + outbox) |")
    print("|---|---:|---:|")
    columns = {title: list(zip(*per_round, strict=True)) for title, per_round in results.items()}
    for title, (update_ms, tx_ms) in columns.items():
        print(f"| {title} | {spread(update_ms).show()} | {spread(tx_ms).show()} |")
    durable, base = columns[next(iter(CONFIGS))], columns[list(CONFIGS)[-1]]
    for i, kind in enumerate(("update_one", "transaction")):
        print(f"durable / baseline {kind}, per round: {spread(ratios(durable[i], base[i])).show()}")


if __name__ == "__main__":
    main()
