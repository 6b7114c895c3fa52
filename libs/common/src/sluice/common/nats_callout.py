"""Per-job NATS users without reloading nats-server: its auth callout (compose, Kubernetes).

`sluice up` gives each batch job's workers a NATS user of their own by rewriting
nats-server's configuration and sending it SIGHUP (nats_auth.JobUsers). In compose and
Kubernetes nats-server runs in a container of its own, which the batch service can
neither rewrite nor signal. There, nats-server's *auth callout* (NATS ADR-26, nats-server
2.10+) does it: its configuration names the platform's static users (`auth_users`, checked
by nats-server itself as before) and an issuer, the public half of an account nkey. Any
other connection is put on hold while nats-server asks `$SYS.REQ.USER.AUTH`, where the
batch service (`JobCallout.serve`) answers:

- a user `batch-job-<job>` whose job runs now and whose password is that job's (an HMAC
  of the job's name, as JobUsers derives it) gets a user JWT, signed with the issuer's
  seed, holding that job's permissions alone (`JobQueue.worker_permissions`: its own queue,
  results and inboxes);
- anyone else gets an error, and nats-server refuses the connection.

The request is a JWT nats-server signs; the answer an authorization-response JWT whose
subject is the user nkey nats-server made for this one connection and whose audience is
that server (both checked by nats-server, so an answer cannot be replayed for another
connection), carrying the user JWT. Only the batch service holds the seed (a secret of
its container, `SLUICE_NATS_CALLOUT_SEED_FILE`); nats-server's configuration holds the
public key. A job that ends is forgotten: new connections of its user are refused at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import nkeys

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
JOB_USER_PREFIX = "batch-job-"  # as nats_auth.JOB_USER_PREFIX
GLOBAL_ACCOUNT = "$G"  # the account of a configuration without accounts: every user's
Permissions = dict[str, Any]


def new_issuer_seed() -> str:
    """A new account nkey seed (`SA...`): who may issue users to nats-server."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT)
    return seed.decode()


def issuer_public_key(seed: str) -> str:
    """The seed's public key (`A...`), what nats-server's `auth_callout.issuer` names."""
    public: bytes = nkeys.from_seed(seed.encode()).public_key
    return public.decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(claims: dict[str, Any], issuer: nkeys.KeyPair) -> str:
    """A NATS JWT (nats-io/jwt v2): `iss`, `iat` and `jti` filled in, signed with Ed25519."""
    body = {**claims, "iss": issuer.public_key.decode(), "iat": int(time.time())}
    body.pop("jti", None)
    digest = hashlib.new("sha512_256", json.dumps(body, separators=(",", ":")).encode())
    body["jti"] = base64.b32encode(digest.digest()).rstrip(b"=").decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    signature = issuer.sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{_b64(signature)}"


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT (not its signature: see `JobCallout.answer`)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def jwt_permissions(permissions: Permissions) -> dict[str, Any]:
    """nats-server configuration permissions (`publish`/`subscribe`) as a user JWT's
    (`pub`/`sub`)."""
    limits: dict[str, Any] = {}
    for config_key, jwt_key in (("publish", "pub"), ("subscribe", "sub")):
        rule = permissions.get(config_key)
        if rule:
            limits[jwt_key] = {k: list(v) for k, v in rule.items() if k in ("allow", "deny")}
    return limits


class JobCallout:
    """The batch jobs' NATS users, answered through nats-server's auth callout.

    The same interface as nats_auth.JobUsers (add/remove/keep_only/password), so the batch
    runner treats both alike; here a change takes effect at the next connection."""

    mechanism = "nats-server's auth callout, answered by the batch service"

    def __init__(self, seed: str):
        self._issuer = nkeys.from_seed(seed.encode())
        self._key = hashlib.sha256(b"sluice batch job passwords\0" + seed.encode()).digest()
        self._jobs: dict[str, Permissions] = {}
        self._lock = threading.Lock()  # add/remove run in threads, answers on the event loop
        self.answered = 0
        self.refused = 0

    @classmethod
    def from_file(cls, path: Path) -> JobCallout:
        return cls(path.read_text().strip())

    def password(self, job: str) -> str:
        """The job's password: an HMAC of its name, the same again after a restart."""
        digest = hmac.new(self._key, job.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode()

    def add(self, job: str, permissions: Permissions) -> str:
        with self._lock:
            self._jobs[job] = permissions
        return self.password(job)

    def remove(self, job: str) -> None:
        with self._lock:
            self._jobs.pop(job, None)

    def keep_only(self, jobs: set[str]) -> None:
        with self._lock:
            for job in set(self._jobs) - jobs:
                del self._jobs[job]

    def answer(self, request: bytes) -> bytes:
        """The authorization response to one of nats-server's requests (a JWT it signed,
        on a subject only nats-server can publish to)."""
        claims = jwt_claims(request.decode())["nats"]
        user_nkey = claims["user_nkey"]
        server_id = claims["server_id"]["id"]
        options = claims.get("connect_opts", {})
        user, password = options.get("user", ""), options.get("pass", "")
        job = user[len(JOB_USER_PREFIX) :] if user.startswith(JOB_USER_PREFIX) else ""
        with self._lock:
            permissions = self._jobs.get(job) if job else None
        response: dict[str, Any] = {
            "sub": user_nkey,
            "aud": server_id,
            "nats": {"type": "authorization_response", "version": 2},
        }
        if permissions is None or not hmac.compare_digest(password, self.password(job)):
            self.refused += 1
            response["nats"]["error"] = "not a running batch job's user, or a wrong password"
        else:
            self.answered += 1
            user_claims = {
                "sub": user_nkey,
                "aud": GLOBAL_ACCOUNT,  # the account to place the user in
                "name": user,
                "nats": {
                    **jwt_permissions(permissions),
                    "subs": -1,
                    "data": -1,
                    "payload": -1,
                    "type": "user",
                    "version": 2,
                },
            }
            response["nats"]["jwt"] = encode_jwt(user_claims, self._issuer)
        return encode_jwt(response, self._issuer).encode()

    async def serve(self, url: str) -> Any:
        """Answer nats-server's auth requests on a connection of the batch service's own
        user (one of `auth_users`); returns the connection (close it to stop)."""
        import nats  # here: the CLI imports nats_auth, which imports this module

        connection = await nats.connect(url, name="batch-auth-callout")

        async def on_request(message: Any) -> None:
            await message.respond(self.answer(message.data))

        await connection.subscribe(AUTH_SUBJECT, cb=on_request)
        await connection.flush()
        return connection
