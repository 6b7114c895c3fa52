"""Acknowledged means durable: a write acknowledged just before a kill -9 of the
Mongo-wire server is there after it restarts (issue 10, item 3).

Runs SecantusDB exactly as `sluice up` does (`mongo_spec` on disk, so with
`--sync-on-commit`) and writes through `create_mongo_client` (`j: true`).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from sluice.common.components import mongo_spec
from sluice.common.mongo import create_mongo_client
from sluice.common.supervisor import Supervisor, free_port, is_alive, port_in_use
from sluice.testing.wait import wait_for

pytestmark = pytest.mark.integration
ROUNDS = 2
WRITES = 20


def test_sluice_up_runs_secantusdb_with_sync_on_commit(tmp_path: Path) -> None:
    on_disk = mongo_spec(host="127.0.0.1", port=1, data_dir=tmp_path)
    in_memory = mongo_spec(host="127.0.0.1", port=1, data_dir=None)
    assert "--sync-on-commit" in on_disk.argv
    assert "--sync-on-commit" not in in_memory.argv  # tests' throwaway server: nothing to keep


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs")
    spec = mongo_spec(host="127.0.0.1", port=free_port(), data_dir=tmp_path / "data")
    try:
        acked = 0
        for _ in range(ROUNDS):
            port_free(spec.ports[0])
            proc = supervisor.start(spec)
            client = create_mongo_client(spec.address, appname="durability-test")
            versions = client["t"]["endpoints"]
            for _ in range(WRITES):
                result = await versions.update_one(
                    {"_id": "my-endpoint"}, {"$inc": {"version": 1}}, upsert=True
                )
                assert result.acknowledged
                acked += 1
            os.kill(proc.pid, signal.SIGKILL)  # at once after the last acknowledgement
            await client.close()
            supervisor.stop_all()  # reaps the killed process
            assert not is_alive(proc)

        port_free(spec.ports[0])
        proc = supervisor.start(spec)
        client = create_mongo_client(spec.address, appname="durability-test")
        stored = await client["t"]["endpoints"].find_one({"_id": "my-endpoint"})
        await client.close()
        assert stored is not None
        assert stored["version"] == acked == ROUNDS * WRITES
    finally:
        supervisor.stop_all()


def port_free(port: int) -> None:
    """Wait until the killed server's port can be bound again, as `sluice up`'s supervisor
    retries a restart with back-off: once (ci23), the restart right after a kill -9 found
    the port still in use, and the preflight refused to start."""
    wait_for(lambda: not port_in_use("127.0.0.1", port), f"port {port} free again", deadline=60)
