"""NATS users of the local platform: one per service, so deployment code has none.

Without credentials any local process could publish forged events into the audit
stream or delete it. `sluice up` runs nats-server with an `authorization` block
listing a user per service (and one for the CLI, which waits for `traffic.applied`),
each with a random password; the services get `nats://<user>:<password>@host:port`
in their own environment only. Passwords live in `<state dir>/nats-auth/`
(0700, files 0600), which deployments cannot enter.

Batch workers run a deployment's scoring code *and* need NATS (their job's work
queue), so their user (`batch-worker`) is denied what would harm others: publishing
or subscribing on the events, usage and metrics subjects, reading the events
stream through JetStream's API, and creating, changing or deleting any stream.
What it can still reach are the batch subjects (other jobs' queues included: see
docs/security.md).

A NATS named by SLUICE_NATS_URL is the operator's: its authentication is theirs.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

CLI_USER = "cli"
WORKER_USER = "batch-worker"
FOLDER = "nats-auth"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def with_user(url: str, user: str, password: str) -> str:
    """`nats://host:port` -> `nats://user:password@host:port`."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def worker_denials(subject_root: str, events_stream: str) -> dict[str, list[str]]:
    """What the batch workers' user may not publish or subscribe to."""
    own = [f"{subject_root}.events.>", f"{subject_root}.usage.>", f"{subject_root}.metrics.>"]
    api = "$JS.API"
    return {
        "publish": [
            *own,
            f"{api}.STREAM.CREATE.>",
            f"{api}.STREAM.UPDATE.>",
            f"{api}.STREAM.DELETE.>",
            f"{api}.STREAM.PURGE.>",
            f"{api}.STREAM.MSG.DELETE.>",
            f"{api}.STREAM.MSG.GET.{events_stream}",
            f"{api}.DIRECT.GET.{events_stream}",
            f"{api}.DIRECT.GET.{events_stream}.>",
            f"{api}.CONSUMER.*.{events_stream}",
            f"{api}.CONSUMER.*.{events_stream}.>",
            f"{api}.CONSUMER.*.*.{events_stream}.>",
        ],
        "subscribe": own,
    }


@dataclass(frozen=True)
class NatsUsers:
    """The users nats-server knows, their passwords, and its configuration file."""

    passwords: dict[str, str]
    config_file: Path

    @classmethod
    def ensure(
        cls, state_dir: Path, users: list[str], *, subject_root: str, events_stream: str
    ) -> NatsUsers:
        """Keep existing passwords (running services use them), add missing users, and
        (re)write nats-server's configuration."""
        folder = state_dir / FOLDER
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        stored = folder / "passwords.json"
        passwords: dict[str, str] = json.loads(stored.read_text()) if stored.exists() else {}
        for user in [*users, CLI_USER, WORKER_USER]:
            passwords.setdefault(user, secrets.token_urlsafe(24))
        _write_private(stored, json.dumps(passwords, indent=1))
        denied = worker_denials(subject_root, events_stream)
        entries = []
        for user, password in sorted(passwords.items()):
            entry: dict[str, object] = {"user": user, "password": password}
            if user == WORKER_USER:
                entry["permissions"] = {
                    "publish": {"deny": denied["publish"]},
                    "subscribe": {"deny": denied["subscribe"]},
                }
            entries.append(entry)
        config = folder / "nats-server.conf"
        # nats-server's configuration format accepts JSON.
        _write_private(config, json.dumps({"authorization": {"users": entries}}, indent=1))
        return cls(passwords=passwords, config_file=config)

    def url(self, base: str, user: str) -> str:
        return with_user(base, user, self.passwords[user])
