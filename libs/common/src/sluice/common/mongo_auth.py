"""Authentication of the embedded SecantusDB: one platform user, SCRAM-SHA-256.

Without it any local process (deployment code included) could change endpoints,
keys' ciphertexts or instances on the Mongo-wire port. `sluice up` runs SecantusDB
with `--auth` and gives the services `mongodb://sluice:<password>@...`; the password
is in `<state dir>/mongo-auth/password` (0700 folder, 0600 file).

SecantusDB creates users only while it runs without `--auth` (its `--help`), so the
first `sluice up` (and any up after the password file changed) starts it once on a
free loopback port, runs `createUser` (or `updateUser`), and stops it before the real
server starts: an unauthenticated server holding no data listens for about a second,
once. A MongoDB named by SLUICE_MONGODB_URI is the operator's: its authentication
is theirs (put the credentials in the URI).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import time
from pathlib import Path

from sluice.common.settings import MONGO_USER, with_mongo_user
from sluice.common.supervisor import free_port

USER = MONGO_USER
FOLDER = "mongo-auth"
START_DEADLINE_S = 60.0


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def with_credentials(uri: str, password: str) -> str:
    """`mongodb://host:port/?x` -> `mongodb://sluice:<password>@host:port/?x&authSource=admin`."""
    return with_mongo_user(uri, USER, password)


class MongoUser:
    """The platform's SecantusDB user: its password, and making the server know it."""

    def __init__(self, state_dir: Path):
        self.folder = state_dir / FOLDER
        self._password_file = self.folder / "password"
        self._provisioned = self.folder / "provisioned"  # sha256 of the password it knows

    def password(self) -> str:
        if not self._password_file.exists():
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_private(self._password_file, secrets.token_urlsafe(32))
        return self._password_file.read_text().strip()

    def ensure_provisioned(self, data_dir: Path, host: str) -> str:
        """Make the server storing `data_dir` know the user; returns the password."""
        password = self.password()
        digest = hashlib.sha256(password.encode()).hexdigest()
        if self._provisioned.exists() and self._provisioned.read_text().strip() == digest:
            return password
        _create_user(data_dir, host, password)
        _write_private(self._provisioned, digest)
        return password


def _create_user(data_dir: Path, host: str, password: str) -> None:
    # pymongo here, not at the top: the CLI imports this module through components.
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure, PyMongoError

    from sluice.common.components import mongo_spec  # (which imports this module)

    port = free_port(host)
    # The platform's own server command, without --auth: the user does not exist yet.
    spec = mongo_spec(host=host, port=port, data_dir=data_dir)
    process = subprocess.Popen(
        spec.argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        client: MongoClient[dict[str, object]] = MongoClient(
            f"mongodb://{host}:{port}/?directConnection=true", serverSelectionTimeoutMS=500
        )
        with client:
            deadline = time.monotonic() + START_DEADLINE_S
            while True:
                try:
                    client.admin.command("ping")
                    break
                except PyMongoError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        err = process.stderr.read().decode() if process.stderr else ""
                        raise RuntimeError(
                            f"SecantusDB did not start to create its user: {err[-500:]}"
                        ) from None
                    time.sleep(0.1)
            roles = [{"role": "root", "db": "admin"}]
            try:
                client.admin.command("createUser", USER, pwd=password, roles=roles)
            except OperationFailure:  # it exists (a new password file): set the password
                client.admin.command("updateUser", USER, pwd=password, roles=roles)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
