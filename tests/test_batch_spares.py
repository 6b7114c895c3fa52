"""The batch service's spare workers: how many wait, for whom, and for how long.

Real processes (`python -m sluice.batch.spare` with nothing to preload); that a
spare becomes a job's worker is shown end to end in test_batch.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest

from sluice.batch.spares import SpareKey, SparePool
from sluice.common.handover import hand_over
from sluice.common.isolation import Account
from sluice.testing.wait import wait_for


@pytest.mark.integration  # starts a process
def test_want_take_cap_and_prune(tmp_path: Path) -> None:
    pool = SparePool(tmp_path, preload=(), max_per_key=3, idle_s=3600)
    key = SpareKey.of(sys.executable, {"OMP_NUM_THREADS": "1"})
    other = SpareKey.of(sys.executable, {})
    try:
        pool.want(key, 2)
        assert pool.waiting(key) == 2 and pool.waiting(other) == 0
        # Started with the deployment's variables and nothing of the platform's.
        spare = psutil.Process(pool.take(key, 1)[0].pid)

        # Just started, it may not have exec'd yet (its environ is then the test's, copied
        # by the fork): read it once the spare's own interpreter runs.
        def exec_d() -> dict[str, str] | None:
            environ = spare.environ()
            return environ if "OMP_NUM_THREADS" in environ else None

        env = wait_for(exec_d, "the spare to run with its own environment", deadline=10)
        assert env["OMP_NUM_THREADS"] == "1" and "SLUICE_ADMIN_TOKEN" not in env
        assert pool.waiting(key) == 1
        pool.want(key, 10)  # capped
        assert pool.waiting(key) == 3
        pool.want(key, 1)  # never fewer than asked before
        assert pool.waiting(key) == 3
        spares = pool.take(key, 5)
        assert len(spares) == 3 and pool.waiting(key) == 0
        for spare in spares:
            spare.kill()
            spare.wait()
        # A dead spare is never handed out.
        pool.want(other, 1)
        [dead] = pool._spares[other]
        dead.kill()
        dead.wait()
        assert pool.take(other, 1) == []
    finally:
        pool.close()


@pytest.mark.integration  # starts a process
def test_spares_nobody_asked_for_are_stopped(tmp_path: Path) -> None:
    pool = SparePool(tmp_path, preload=(), idle_s=0.0)
    key = SpareKey.of(sys.executable, {})
    try:
        pool.want(key, 2)
        processes = list(pool._spares[key])
        pool.prune()
        assert pool.waiting(key) == 0
        wait_for(lambda: all(p.poll() is not None for p in processes), "spares stopped", 10)
    finally:
        pool.close()


@pytest.mark.integration  # starts a process
def test_closing_stdin_without_a_job_ends_a_spare(tmp_path: Path) -> None:
    pool = SparePool(tmp_path, preload=())
    key = SpareKey.of(sys.executable, {})
    pool.want(key, 1)
    [spare] = pool.take(key, 1)
    assert spare.stdin is not None
    wait_for(lambda: f"spare {spare.pid} ready" in (tmp_path / "spares.log").read_text(), "ready")
    spare.stdin.close()
    assert spare.wait(timeout=30) == 0


def test_spares_of_different_users_never_mix() -> None:
    """As root a spare runs as its deployment's user: the user is part of its key."""
    alice, bob = Account("sluice-d-a", 60001, 60001), Account("sluice-d-b", 60002, 60002)
    of_alice = SpareKey.of(sys.executable, {}, alice, Path("/state/spares/a"))
    of_bob = SpareKey.of(sys.executable, {}, bob, Path("/state/spares/b"))
    if alice.switches:  # the platform runs as root
        assert of_alice.user == (60001, 60001) and of_alice != of_bob
    me = Account("me", os.geteuid(), os.getegid())
    assert SpareKey.of(sys.executable, {}, me, Path("/x")) == SpareKey.of(sys.executable, {})


@pytest.mark.integration  # starts a process
def test_a_spare_writes_to_the_log_it_is_handed(tmp_path: Path) -> None:
    """The runner opens the worker's log and passes it over the spare's socket (the
    deployment's user could not open the runner's folder itself)."""
    pool = SparePool(tmp_path / "spares", preload=())
    key = SpareKey.of(sys.executable, {})
    pool.want(key, 1)
    [spare] = pool.take(key, 1)
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    job = {"env": {"PATH": "/usr/bin:/bin"}, "cwd": str(tmp_path)}
    hand_over(spare, job, logs / "worker-0.log")
    spare.wait(timeout=60)  # no configuration: the worker stops, saying why, in its log
    assert "SLUICE_BATCH_WORKER" in (logs / "worker-0.log").read_text()
