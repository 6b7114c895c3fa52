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

import json
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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
    """Which spares can become a given worker: same interpreter, same deployment variables."""

    python: str
    variables: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, python: str, variables: Mapping[str, str]) -> SpareKey:
        return cls(python, tuple(sorted(variables.items())))


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


def hand_over(spare: subprocess.Popen[bytes], env: dict[str, str], cwd: str, log: Path) -> None:
    """Turn a spare into a worker: its environment, working directory and log (one line)."""
    assert spare.stdin is not None
    line = json.dumps({"env": env, "cwd": cwd, "log": str(log)}) + "\n"
    spare.stdin.write(line.encode())
    spare.stdin.close()


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
        with (self._folder / "spares.log").open("ab") as out:
            while len(spares) < wanted:
                spares.append(
                    subprocess.Popen(
                        [key.python, "-m", "sluice.batch.spare", *self._preload],
                        stdin=subprocess.PIPE,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=base_env(key.python, self._folder, dict(key.variables)),
                        cwd=self._folder,
                        start_new_session=True,  # a worker's group, stopped as one
                    )
                )
        self._spares[key] = spares

    def prune(self) -> None:
        """Stop the spares of keys nobody asked for within `idle_s`."""
        now = time.monotonic()
        for key in [k for k, at in self._asked.items() if now - at > self._idle_s]:
            _stop(self._spares.pop(key, []))
            self._wanted.pop(key, None)
            del self._asked[key]

    def close(self) -> None:
        for spares in self._spares.values():
            _stop(spares)
        self._spares.clear()


def _stop(spares: list[subprocess.Popen[bytes]]) -> None:
    """Spares hold nothing yet: kill them (one still importing would not read its stdin)."""
    for spare in spares:
        if spare.poll() is None:
            spare.kill()
            spare.wait()
