"""NATS users of the local platform, each with only the subjects it needs.

Without credentials any local process could publish forged events into the audit
stream or delete it. `sluice up` runs nats-server with an `authorization` block
(`<state dir>/nats-auth/nats-server.conf`, 0600 in a 0700 folder, like the random
passwords in `passwords.json`); each service gets `nats://<user>:<password>@host:port`
in its own environment only. The users:

- **a service** (`registry`, `traffic`, ...) publishes only its own events (the
  catalogue's `source`), its own measurements (`usage` for the provisioner, `metrics`
  for the metrics service, the job queues for the batch service), JetStream's API
  and acks; none may delete or purge the events stream or remove events from it,
  and only the batch service touches the batch subjects.
- **`cli`** (the CLI waits for `traffic.applied`) subscribes to events and publishes
  nothing.
- **`audit`**, for audit and alerting subscribers: reads events (core subscriptions
  and JetStream consumers of the events stream: ephemeral ones, and one durable named
  `audit`), publishes nothing else; its inboxes are `_INBOX_audit.` (clients set that
  inbox prefix) so it cannot read other users' replies.
- **one user per batch job** (`batch-job-<job>`), added by the batch service while the
  job runs (`JobUsers`: the configuration is rewritten and nats-server reloaded with
  SIGHUP): its workers run the deployment's scoring code, so they may pull from and ack
  their own job's queue, publish their own job's results and receive on their own
  inbox prefix, and nothing else: another job's queue, the events, the streams are
  out of reach.

nats-server's configuration holds only bcrypt hashes of the passwords (nats-server
checks a `$2a$` password as a hash): a copy of it, or of `users.json` and
`batch-jobs.json` it is made of, lets nobody connect. The plain passwords stay where
only the platform reads them: the static users' in `passwords.json` (services get
theirs in their environment, `sluice events-url` prints the audit user's), the
jobs' derived from `batch-jobs.key` (an HMAC of the job's name, so a resumed job's
runner finds the same password without storing it).

Compose and Kubernetes cannot reload another container's nats-server, so there the
jobs' users come through nats-server's auth callout instead (sluice.common.nats_callout):
the configuration lists the static users as `auth_users` and the public key of an
account nkey as the issuer; the batch service, which alone holds that key's seed, answers
for every other user: a running job's user and password get that job's permissions, the
same as `sluice up`'s per-job users. `python -m sluice.common.nats_auth <folder>` writes
their nats-server configuration (the same users and permissions as `sluice up`'s, hashes
and the issuer's public key only), one `<user>/password` file per user, which the
operator gives each container as its own secret (SLUICE_NATS_USER +
SLUICE_NATS_PASSWORD_FILE; deploy/compose, deploy/k8s), and `batch-callout/seed`, the
batch container's alone (SLUICE_NATS_CALLOUT_SEED_FILE).

A NATS named by SLUICE_NATS_URL alone is the operator's: its authentication is theirs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import bcrypt

from sluice.common.events.catalogue import ALL, AUTOSCALE_SCALED
from sluice.common.nats_callout import AUTH_SUBJECT, issuer_public_key, new_issuer_seed
from sluice.common.settings import user_inbox, with_nats_user

CLI_USER = "cli"
AUDIT_USER = "audit"
AUDIT_INBOX = user_inbox(AUDIT_USER)
WORKERS_DURABLE = "workers"  # each job's work queue consumer (sluice.batch.queue.DURABLE)
AUDIT_DURABLE = "audit"
JOB_USER_PREFIX = "batch-job-"
FOLDER = "nats-auth"
PASSWORDS = "passwords.json"  # every static user's password
CALLOUT_SEED = "callout.seed"  # compose and Kubernetes: the auth callout issuer's seed
CALLOUT_FOLDER = "batch-callout"  # its folder among the deployed secrets (the batch service's)
CALLOUT = "callout.json"  # the configuration's `auth_callout` block, when there is one
STATIC_USERS = "users.json"  # their entries in the configuration (sluice up writes it)
JOB_USERS = "batch-jobs.json"  # the batch jobs' users (the batch service writes it)
JOB_KEY = "batch-jobs.key"  # the jobs' passwords are derived from it (JobUsers.password)
JOB_LOCK = "batch-jobs.lock"  # one change of the jobs' users at a time (JobUsers._changing)
CONFIG = "nats-server.conf"
PID_FILE = "nats-server.pid"
SERVER_NAME = "sluice"  # as components.nats_spec names it

# bcrypt's lowest cost: the passwords are 192 random bits, which no cost factor makes
# easier or harder to guess, while nats-server pays the cost at every connection (a job's
# workers connect right after the reload that adds their user). bench/nats_bcrypt measures it.
BCRYPT_COST = 4

Permissions = dict[str, Any]  # publish/subscribe allow/deny lists, allow_responses
# Events a service publishes besides those the catalogue names it the source of.
EXTRA_EVENTS = {"provisioner": [AUTOSCALE_SCALED]}


def _write_private(path: Path, text: str) -> None:
    """Replace `path` (0600) at once: a reader (nats-server reloading) sees the old file or
    the new, never a part; the temporary file is unique, so writers never share one."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def hashed(password: str, known: str | None = None) -> str:
    """The bcrypt hash nats-server's configuration holds for `password`: `known` (an earlier
    hash) when it matches, so an unchanged user leaves the configuration unchanged."""
    if known and known.startswith("$2") and bcrypt.checkpw(password.encode(), known.encode()):
        return known
    salt = bcrypt.gensalt(BCRYPT_COST, prefix=b"2a")  # the prefix nats-server documents
    return bcrypt.hashpw(password.encode(), salt).decode()


def with_user(url: str, user: str, password: str) -> str:
    """`nats://host:port` -> `nats://user:password@host:port`."""
    return with_nats_user(url, user, password)


def without_user(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@dataclass(frozen=True)
class Subjects:
    """The platform's subject names, from the events prefix (`sluice.events`)."""

    events_prefix: str
    events_stream: str

    def beside(self, name: str) -> str:
        """`sluice.events` -> `sluice.<name>` (usage, metrics, batch)."""
        return f"{self.events_prefix.rsplit('.', 1)[0]}.{name}"


def service_permissions(service: str, s: Subjects) -> Permissions:
    """A service: its own events and measurements; the events stream cannot be removed;
    it receives the events, on its own inboxes and its own subjects alone."""
    source = f"sluice/{service}"
    events = sorted(
        {e.subject(s.events_prefix) for e in ALL if e.source == source}
        | {e.subject(s.events_prefix) for e in EXTRA_EVENTS.get(service, [])}
    )
    own = {
        "provisioner": [f"{s.beside('usage')}.>"],
        "metrics": [f"{s.beside('metrics')}.>"],
        "batch": [f"{s.beside('batch')}.>"],
    }.get(service, [])
    received = {
        "metrics": [f"{s.beside('usage')}.>"],  # the provisioner's usage samples
        "batch": [
            f"{s.beside('batch')}.>",  # job queues and results
            AUTH_SUBJECT,  # nats-server's auth callout (compose, Kubernetes)
        ],
    }.get(service, [])
    api = "$JS.API"
    stream = s.events_stream
    permissions: Permissions = {
        "publish": {
            "allow": [f"{api}.>", "$JS.ACK.>", "$JS.FC.>", "_INBOX.>", *events, *own],
            "deny": [
                f"{api}.STREAM.DELETE.{stream}",
                f"{api}.STREAM.PURGE.{stream}",
                f"{api}.STREAM.MSG.DELETE.{stream}",
            ],
        },
        # Not the job queues nor the auth requests (they carry the jobs' passwords) but the
        # batch service's; no other service's inboxes.
        "subscribe": {"allow": [f"{s.events_prefix}.>", f"{user_inbox(service)}.>", *received]},
    }
    if service == "batch":  # it answers nats-server's auth callout (compose, Kubernetes)
        permissions["allow_responses"] = True
    return permissions


def audit_permissions(s: Subjects) -> Permissions:
    """Read the events: core subscriptions and consumers of the events stream, nothing else."""
    api = "$JS.API"
    stream = s.events_stream
    durable = AUDIT_DURABLE
    return {
        "publish": {
            "allow": [
                f"{api}.INFO",
                f"{api}.STREAM.INFO.{stream}",
                f"{api}.STREAM.MSG.GET.{stream}",
                f"{api}.DIRECT.GET.{stream}",
                f"{api}.DIRECT.GET.{stream}.>",
                f"{api}.CONSUMER.CREATE.{stream}",  # ephemeral (ordered) consumers
                f"{api}.CONSUMER.CREATE.{stream}.{durable}",
                f"{api}.CONSUMER.CREATE.{stream}.{durable}.>",
                f"{api}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
                f"{api}.CONSUMER.INFO.{stream}.{durable}",
                f"{api}.CONSUMER.DELETE.{stream}.{durable}",
                f"{api}.CONSUMER.MSG.NEXT.{stream}.{durable}",
                f"$JS.ACK.{stream}.{durable}.>",
                f"$JS.FC.{stream}.>",
            ],
        },
        "subscribe": {"allow": [f"{s.events_prefix}.>", f"{AUDIT_INBOX}.>"]},
    }


def cli_permissions(s: Subjects) -> Permissions:
    return {"publish": {"deny": [">"]}, "subscribe": {"allow": [f"{s.events_prefix}.>"]}}


def worker_permissions(
    work: str, results_stream: str, results_prefix: str, inbox_prefix: str
) -> Permissions:
    """What batch workers may do: pull from and ack the work consumer `work`
    (`<stream>.<durable>`, wildcards allowed), publish results under `results_prefix`,
    read `results_stream`'s state (its interrupted attempts), receive on `inbox_prefix`;
    not the events, not the other streams."""
    return {
        "publish": {
            "allow": [
                f"$JS.API.CONSUMER.MSG.NEXT.{work}",
                f"$JS.API.CONSUMER.INFO.{work}",
                f"$JS.ACK.{work}.>",
                f"$JS.API.STREAM.INFO.{results_stream}",
                f"{results_prefix}.>",
            ]
        },
        "subscribe": {"allow": [f"{inbox_prefix}.>"]},
    }


def static_entries(
    passwords: dict[str, str], services: list[str], s: Subjects, known: dict[str, str]
) -> list[Any]:
    """The static users' configuration entries; `known`: their hashes written before."""
    entries: list[Any] = []
    for user in sorted(passwords):
        if user == CLI_USER:
            permissions = cli_permissions(s)
        elif user == AUDIT_USER:
            permissions = audit_permissions(s)
        elif user in services:
            permissions = service_permissions(user, s)
        else:
            continue  # a user of an earlier version: gone
        password = hashed(passwords[user], known.get(user))
        entries.append({"user": user, "password": password, "permissions": permissions})
    return entries


def render(folder: Path) -> Path:
    """nats-server's configuration: the static users and the batch jobs' users."""
    users = json.loads((folder / STATIC_USERS).read_text())
    jobs = folder / JOB_USERS
    if jobs.exists():
        users += json.loads(jobs.read_text())
    config = folder / CONFIG
    # nats-server's configuration format accepts JSON. The server name is here, not on its
    # command line: a reload refuses a file that would change it (to none).
    authorization: dict[str, Any] = {"users": users}
    callout = folder / CALLOUT
    if callout.exists():
        authorization["auth_callout"] = json.loads(callout.read_text())
    body = {"server_name": SERVER_NAME, "authorization": authorization}
    _write_private(config, json.dumps(body, indent=1))
    return config


@dataclass(frozen=True)
class NatsUsers:
    """The static users nats-server knows, their passwords, and its configuration file."""

    passwords: dict[str, str]
    config_file: Path
    pid_file: Path

    @classmethod
    def ensure(cls, state_dir: Path, services: list[str], subjects: Subjects) -> NatsUsers:
        """Keep existing passwords (running services use them), add missing users, and
        (re)write nats-server's configuration (keeping the batch jobs' users)."""
        return cls.ensure_in(state_dir / FOLDER, services, subjects)

    @classmethod
    def ensure_in(
        cls, folder: Path, services: list[str], subjects: Subjects, *, callout: bool = False
    ) -> NatsUsers:
        """`callout`: compose and Kubernetes, where the jobs' users come through nats-server's
        auth callout (an issuer seed kept in `callout.seed`, made once)."""
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        stored = folder / PASSWORDS
        users = [*services, CLI_USER, AUDIT_USER]
        passwords: dict[str, str] = json.loads(stored.read_text()) if stored.exists() else {}
        passwords = {u: p for u, p in passwords.items() if u in users}
        for user in users:
            passwords.setdefault(user, secrets.token_urlsafe(24))
        _write_private(stored, json.dumps(passwords, indent=1))
        static = folder / STATIC_USERS
        known = (
            {e["user"]: e["password"] for e in json.loads(static.read_text())}
            if static.exists()
            else {}
        )
        entries = static_entries(passwords, services, subjects, known)
        _write_private(static, json.dumps(entries, indent=1))
        if callout:
            seed_file = folder / CALLOUT_SEED
            if not seed_file.exists():
                _write_private(seed_file, new_issuer_seed())
            block = {"issuer": issuer_public_key(seed_file.read_text()), "auth_users": users}
            _write_private(folder / CALLOUT, json.dumps(block, indent=1))
        return cls(passwords=passwords, config_file=render(folder), pid_file=folder / PID_FILE)

    def url(self, base: str, user: str) -> str:
        return with_user(base, user, self.passwords[user])


def job_user(job: str) -> str:
    return f"{JOB_USER_PREFIX}{job}"


class JobUsers:
    """The batch jobs' NATS users, kept in `batch-jobs.json` beside the static users.

    Each change rewrites nats-server's configuration and sends it SIGHUP (a reload
    keeps every other connection). Used by the batch service only; blocking (small
    files, one signal), called from a thread per job starting or ending, so changes
    take a lock (`batch-jobs.lock`): two read-modify-writes at once would lose one
    job's user. nats-server applies reloads one at a time, each reading the whole file
    (a signal arriving during a reload makes one more), so the last change always wins;
    a change has taken effect once the job's own password is accepted (`nats_accepts`)
    or, after its removal, refused (`nats_refuses`): the runner waits for both."""

    mechanism = "nats-server's configuration, reloaded with SIGHUP"

    def __init__(self, folder: Path):
        self.folder = folder
        self.file = folder / JOB_USERS

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """One change at a time, across threads and processes (flock on its own file)."""
        fd = os.open(self.folder / JOB_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _entries(self) -> list[dict[str, Any]]:
        return json.loads(self.file.read_text()) if self.file.exists() else []

    def _save(self, entries: list[dict[str, Any]]) -> None:
        _write_private(self.file, json.dumps(entries, indent=1))
        render(self.folder)
        self._reload()

    def password(self, job: str) -> str:
        """The job's password: an HMAC of its name with the folder's key (made once, 0600),
        the same again when a restarted batch service resumes the job."""
        key_file = self.folder / JOB_KEY
        if not key_file.exists():
            with self._changing():
                if not key_file.exists():  # another thread may have made it meanwhile
                    _write_private(key_file, secrets.token_urlsafe(32))
        digest = hmac.new(key_file.read_bytes(), job.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode()

    def add(self, job: str, permissions: Permissions) -> str:
        """The job's user (created, or its permissions refreshed); returns its password."""
        user = job_user(job)
        password = self.password(job)
        with self._changing():
            entries = self._entries()
            old = next((e for e in entries if e["user"] == user), None)
            entry = {
                "user": user,
                "password": hashed(password, old["password"] if old else None),
                "permissions": permissions,
            }
            if old != entry:
                self._save([e for e in entries if e["user"] != user] + [entry])
        return password

    def remove(self, job: str) -> None:
        with self._changing():
            entries = self._entries()
            kept = [e for e in entries if e["user"] != job_user(job)]
            if len(kept) != len(entries):
                self._save(kept)

    def keep_only(self, jobs: set[str]) -> None:
        """Forget the users of jobs that ended while the service was away."""
        wanted = {job_user(j) for j in jobs}
        with self._changing():
            entries = self._entries()
            kept = [e for e in entries if e["user"] in wanted]
            if len(kept) != len(entries):
                self._save(kept)

    def _reload(self) -> None:
        """SIGHUP to nats-server, if the pid file names a running nats-server (a stale pid
        may name another process, for which SIGHUP would be fatal)."""
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.folder / PID_FILE).read_text().strip())
            if "nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGHUP)


async def _quiet(exc: Exception) -> None:
    del exc  # a refusal is an expected answer here, not worth a traceback


async def _handshake(url: str) -> bool | None:
    """One connection as `url`'s user: True if nats-server answered the handshake's PING,
    False if it refused (an error, or the socket closed), None if it did not answer in time.

    nats-py's connect() returns without error when the server closes the socket during
    the handshake without an -ERR (nats-io/nats.py#975), and nats-server does that when a
    reload removes the user of a connection whose CONNECT it is checking (its
    reloadAuthorization closes such a client silently, as one that "moved accounts"). Only
    the PONG, which nats-py records as `is_connected`, proves that the user was accepted."""
    import nats  # here: the CLI imports this module, and nats-py (with aiohttp) is slow to load
    import nats.errors

    try:
        connection = await nats.connect(
            url,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=2,
            error_cb=_quiet,
        )
    except TimeoutError:  # nats.errors.TimeoutError too
        return None
    except (nats.errors.Error, OSError):
        return False
    accepted: bool = connection.is_connected
    with contextlib.suppress(nats.errors.Error):
        await connection.close()
    return accepted


async def _answers(url: str, accepted: bool, deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while await _handshake(url) is not accepted:
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.05)
    return True


async def nats_accepts(url: str, *, deadline_s: float) -> bool:
    """Whether NATS accepts `url`'s user before the deadline (an added user: a reload takes
    effect shortly after its signal)."""
    return await _answers(url, True, deadline_s)


async def nats_refuses(url: str, *, deadline_s: float) -> bool:
    """Whether NATS refuses `url`'s user before the deadline (a removed user, once the
    reload took effect; an unreachable server refuses too)."""
    return await _answers(url, False, deadline_s)


def write_deploy_secrets(folder: Path, services: list[str], subjects: Subjects) -> list[Path]:
    """compose and Kubernetes: `server/nats-server.conf` (what nats-server reads: hashes and
    the auth callout issuer's public key only), `<user>/password` for each user and
    `batch-callout/seed`, each folder a container's own secret (its service's alone). The
    passwords and the seed themselves are kept in `users/` (as `sluice up` keeps them), so
    running it again changes nothing a running platform uses."""
    users = NatsUsers.ensure_in(folder / "users", services, subjects, callout=True)
    (folder / "server").mkdir(exist_ok=True)
    _write_private(folder / "server" / CONFIG, users.config_file.read_text())
    written = [folder / "server" / CONFIG]
    for user, password in sorted(users.passwords.items()):
        (folder / user).mkdir(exist_ok=True)
        _write_private(folder / user / "password", password)
        written.append(folder / user / "password")
    (folder / CALLOUT_FOLDER).mkdir(exist_ok=True)
    _write_private(folder / CALLOUT_FOLDER / "seed", (folder / "users" / CALLOUT_SEED).read_text())
    written.append(folder / CALLOUT_FOLDER / "seed")
    return written


def main(argv: list[str]) -> None:
    from sluice.common.platform import SERVICES  # the services `sluice up` would run
    from sluice.common.settings import Settings

    if len(argv) != 1:
        raise SystemExit("usage: python -m sluice.common.nats_auth <folder>")
    s = Settings()
    subjects = Subjects(s.events_subject_prefix, s.events_stream)
    for path in write_deploy_secrets(Path(argv[0]), [svc.name for svc in SERVICES], subjects):
        print(path)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
