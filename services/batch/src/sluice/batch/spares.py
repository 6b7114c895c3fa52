"""Warm batch workers: spare processes per environment, turned into a job's workers on demand.

A cold worker spends seconds starting Python and importing pandas,
scikit-learn and FastStream before its first mini-batch (8-10 s on a loaded
2-core machine), which dominated small jobs. The pool keeps pre-started
spares (see spare.py) per *key*: the environment's interpreter plus the
deployment's environment variables (libraries read some of those at import).
A job takes up to its worker count of spares and starts the rest cold.

When spares are started:
- when a batch deployment is created or updated (the service subscribes to
  those events): as many as the deployment's `instance_count x
  max_concurrency_per_instance`, so even its first job starts warm;
- when a job ends: as many as that job used, for the next one. Not while a
  job runs, because importing competes with its workers for the CPU.

At most `max_per_key` spares wait per key, and a key no job or deployment
asked for in `idle_s` has its spares stopped, so a deleted deployment's
spares do not live for ever. Spares are platform overhead, not the job's
compute: a job's worker-seconds count from the moment a spare becomes its
worker.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sluice.common.isolation import Account

# What spares import ahead of time: the usual scoring-script libraries (missing ones are
# skipped) and the worker itself (FastStream, nats-py, pydantic).
PRELOAD = (
    "numpy",
    "pandas",
    "sklearn",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "joblib",
    "sluice.batch.worker",
    "sluice.batch.output",
)
MAX_PER_KEY = 4
IDLE_S = 3600.0


@dataclass(frozen=True)
class SpareKey:
    """Which spares can become a given worker: same interpreter, same deployment variables,
    same user. As root, spares start as the deployment's own user (`user`: uid, gid) in its
    folder (`home`), so a spare is only ever handed to the deployment it runs as, and the
    deployment's variables (PYTHONPATH and the like) never reach a root process."""

    python: str
    variables: tuple[tuple[str, str], ...] = ()
    user: tuple[int, int] | None = None
    home: str | None = None

    @classmethod
    def of(
        cls,
        python: str,
        variables: Mapping[str, str],
        account: Account | None = None,
        home: Path | None = None,
    ) -> SpareKey:
        user = (account.uid, account.gid) if account is not None and account.switches else None
        return cls(python, tuple(sorted(variables.items())), user, str(home) if user else None)


def base_env(python: str, home: Path, variables: Mapping[str, str]) -> dict[str, str]:
    """What every batch worker process starts with: nothing of the platform's (no admin
    token, secret key or database URI reaches deployment code) and the deployment's own."""
    return {
        **variables,
        "PATH": f"{Path(python).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }


class SparePool:
    def __init__(
        self,
        folder: Path,
        *,
        preload: tuple[str, ...] = PRELOAD,
        max_per_key: int = MAX_PER_KEY,
        idle_s: float = IDLE_S,
    ):
        self._folder = folder  # HOME of waiting spares, and their shared log
        self._preload = preload
        self._max = max_per_key
        self._idle_s = idle_s
        self._spares: dict[SpareKey, list[subprocess.Popen[bytes]]] = {}
        self._wanted: dict[SpareKey, int] = {}
        self._asked: dict[SpareKey, float] = {}  # time.monotonic() of the last take or want

    def waiting(self, key: SpareKey) -> int:
        """Spares of `key` alive and waiting (some may still be importing)."""
        return sum(1 for p in self._spares.get(key, []) if p.poll() is None)

    def take(self, key: SpareKey, count: int) -> list[subprocess.Popen[bytes]]:
        """Up to `count` live spares of `key`, still importing or ready; the caller owns them."""
        self._asked[key] = time.monotonic()
        alive = [p for p in self._spares.pop(key, []) if p.poll() is None]
        taken, rest = alive[:count], alive[count:]
        if rest:
            self._spares[key] = rest
        return taken

    def want(self, key: SpareKey, count: int) -> None:
        """Keep `count` spares of `key` waiting (at most `max_per_key`; never fewer than asked
        before), starting the missing ones now."""
        self._asked[key] = time.monotonic()
        wanted = min(self._max, max(count, self._wanted.get(key, 0)))
        self._wanted[key] = wanted
        spares = [p for p in self._spares.get(key, []) if p.poll() is None]
        self._folder.mkdir(parents=True, exist_ok=True)
        home = Path(key.home) if key.home else self._folder
        with (self._folder / "spares.log").open("ab") as out:
            while len(spares) < wanted:
                spares.append(self._start(key, home, out))
        self._spares[key] = spares

    def _start(self, key: SpareKey, home: Path, out: BinaryIO) -> subprocess.Popen[bytes]:
        """One spare; its stdin is a socket, over which `hand_over` also passes its log."""
        ours, theirs = socket.socketpair()
        uid, gid, groups = as_user(key.user)
        with ours, theirs:
            spare = subprocess.Popen(
                [key.python, "-m", "sluice.batch.spare", *self._preload],
                stdin=theirs.fileno(),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=base_env(key.python, home, dict(key.variables)),
                cwd=home,
                start_new_session=True,  # a worker's group, stopped as one
                user=uid,
                group=gid,
                extra_groups=groups,
            )
            spare.stdin = ours.makefile("wb")  # owns the socket once `ours` is closed
        return spare

    def prune(self) -> None:
        """Stop the spares of keys nobody asked for within `idle_s`."""
        now = time.monotonic()
        for key in [k for k, at in self._asked.items() if now - at > self._idle_s]:
            _stop(self._spares.pop(key, []))
            self._wanted.pop(key, None)
            del self._asked[key]

    def forget_user(self, user: tuple[int, int]) -> int:
        """Stop every spare that runs as `user` (a deleted deployment's); how many."""
        keys = [key for key in self._spares.keys() | self._asked.keys() if key.user == user]
        stopped = 0
        for key in keys:
            spares = self._spares.pop(key, [])
            stopped += sum(1 for spare in spares if spare.poll() is None)
            _stop(spares)
            self._wanted.pop(key, None)
            self._asked.pop(key, None)
        return stopped

    def close(self) -> None:
        for spares in self._spares.values():
            _stop(spares)
        self._spares.clear()


def as_user(user: tuple[int, int] | None) -> tuple[int | None, int | None, list[int] | None]:
    """Popen's `user`, `group` and `extra_groups` that start a process as `user` (none: as
    the platform's user)."""
    if user is None:
        return None, None, None
    return user[0], user[1], []


def _stop(spares: list[subprocess.Popen[bytes]]) -> None:
    """Spares hold nothing yet: kill them (one still importing would not read its stdin)."""
    for spare in spares:
        if spare.poll() is None:
            spare.kill()
            spare.wait()
