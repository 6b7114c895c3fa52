"""Warm instances: spare processes (see spare.py) that become a deployment's inference server.

Which spare may become which instance is its `SpareKey`:

- **Shared** (`user` None): one spare per environment, started as the platform's user.
  It drops to the deployment's user when it is handed an instance. Used when the platform
  does not run as root (every process is the invoking user's anyway) and, as root, for
  environments without a deployer's packages (the platform's interpreter or its stand-in):
  a root process must not import a deployer's packages (see `spare_is_safe`).
- **Per deployment** (`user`: its uid and gid, `home`: its HOME): as root, an environment
  built from a deployer's requirements gets one spare per deployment, started as that
  deployment's user in its HOME. It never runs as root, and it is only ever handed to the
  deployment it runs as. It is started after the deployment's first instance (then its
  next instance, a scale-up, a rolling update or a wake from zero, starts warm) and stopped
  when the deployment is deleted or moves to another environment.

A spare's stdin is a socket: `sluice.common.handover.hand_over` writes the instance's
arguments, environment and working directory there as one JSON line, with the instance's
log file passed as an open file (SCM_RIGHTS), since a spare running as the deployment's
user cannot open the platform's log folder.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.common.interpreters import platform_minor
from sluice.common.isolation import Account, isolating, spare_env

# What spares import ahead of time: the usual scoring-script libraries (missing ones are skipped).
PRELOAD = ("numpy", "pandas", "sklearn", "sklearn.linear_model", "sklearn.ensemble", "joblib")


@dataclass(frozen=True)
class SpareKey:
    """Which spares can become a given instance: same interpreter and, for a per-deployment
    spare, same user and HOME (the deployment's)."""

    python: str
    user: tuple[int, int] | None = None
    home: str | None = None


def spare_key(
    python: str, account: Account | None = None, home: Path | None = None
) -> SpareKey | None:
    """The spare an instance of `python` run by `account` (HOME `home`) can start from, or
    None when it starts cold: an interpreter of another Python minor (a spare runs the
    platform's own code, which only the platform's minor can import), or, as root, an
    environment holding a deployer's packages without a deployment to run it as."""
    if not platform_minor(python):
        return None
    if spare_is_safe(python):
        return SpareKey(python)
    if account is not None and account.switches and home is not None:
        return SpareKey(python, (account.uid, account.gid), str(home))
    return None


def spare_is_safe(python: str) -> bool:
    """Whether a spare of `python` may start as the platform's user. As root such a spare
    starts as root (it drops to its deployment's user only when it becomes an instance) and
    imports numpy, scikit-learn, ... from its environment first, running any `.pth` file
    there: an environment built from a deployer's requirements (a wheel URL, a package of
    theirs) would run their code as root. So as root only environments without a deployer's
    packages (the platform's interpreter, or its stand-in: `.ready` lists no requirement)
    get shared spares; the others get per-deployment spares, started as the deployment's
    user."""
    if not isolating():
        return True
    ready = Path(python).parent.parent / ".ready"
    return not ready.is_file() or not ready.read_text().strip()


class SparePool:
    """At most one waiting spare per key."""

    def __init__(self, logs_root: Path, preload: tuple[str, ...] = PRELOAD):
        self._logs = logs_root / "spares"
        self._preload = preload
        self._spares: dict[SpareKey, subprocess.Popen[bytes]] = {}

    def take(self, key: SpareKey) -> subprocess.Popen[bytes] | None:
        """The waiting spare of `key` (still importing, or ready), or None; the caller owns it."""
        spare = self._spares.pop(key, None)
        if spare is None or spare.poll() is not None:
            return None
        return spare

    def replenish(self, key: SpareKey) -> None:
        """Start a spare of `key` unless one is waiting. A deployment's spare of another
        environment (before an update) is stopped: that environment is no longer its own."""
        if key.user is not None:
            self._stop([k for k in self._spares if k.home == key.home and k != key])
        current = self._spares.get(key)
        if current is not None and current.poll() is None:
            return
        self._spares[key] = self._start(key)

    def forget(self, home: Path) -> None:
        """Stop the spares of the deployment whose HOME is `home` (it was deleted)."""
        self._stop([key for key in self._spares if key.home == str(home)])

    def close(self) -> None:
        self._stop(list(self._spares))

    def _start(self, key: SpareKey) -> subprocess.Popen[bytes]:
        self._logs.mkdir(parents=True, exist_ok=True)
        env, cwd = spare_env(), "/"
        switch: dict[str, Any] = {}
        if key.user is not None and key.home is not None:  # the deployment's user, in its HOME
            env |= {"HOME": key.home, "TMPDIR": key.home}
            cwd = key.home
            switch = {"user": key.user[0], "group": key.user[1], "extra_groups": []}
        ours, theirs = socket.socketpair()
        log = self._logs / f"{uuid.uuid4().hex[:8]}.log"
        with ours, theirs, log.open("ab") as out:
            spare = subprocess.Popen(
                [key.python, "-m", "sluice.provisioner.spare", *self._preload],
                stdin=theirs.fileno(),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,  # nothing of the platform's: it becomes deployment code
                cwd=cwd,
                umask=0o077,
                **switch,
            )
            spare.stdin = ours.makefile("wb")  # owns the socket once `ours` is closed
        return spare

    def _stop(self, keys: list[SpareKey]) -> None:
        """Spares hold nothing yet: kill them (one still importing would not read its stdin)."""
        for key in keys:
            spare = self._spares.pop(key, None)
            if spare is not None and spare.poll() is None:
                spare.kill()
                spare.wait()
            if spare is not None and spare.stdin is not None:
                with contextlib.suppress(OSError):
                    spare.stdin.close()
