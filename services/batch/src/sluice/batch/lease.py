"""One batch service per database, enforced: a lease document in MongoDB (`service_leases`).

Every batch service resumes every unfinished job of its database at start and
owns its runners until the job ends; two of them would run the same job's
runner twice (two sets of workers, two writers of its progress). Per-job
leases with fencing would let several share the jobs; one service per
database is what the design needs (workers, not the service, are what
scales), so this enforces it and says so:

- At start the service takes the lease `batch` (holder: host, pid and a
  random id; an expiry `ttl_s` ahead). A lease another holder keeps renewing
  is waited for up to `ttl_s` plus a renewal (a restarted service finds its
  crashed predecessor's lease and gets it once it expires), then start-up
  fails with an error naming the holder.
- The holder renews every `ttl_s / 3`. One that cannot renew before its own
  expiry (database away, process stalled) has lost the lease: the service
  stops its runners and exits, so by the time another service can take the
  lease this one no longer runs jobs (its workers stop with it; the next
  holder resumes the jobs from their streams).

Expiry times are the services' clocks (UTC), so hosts sharing a database
need clocks within a fraction of `ttl_s`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from sluice.common.log import get_logger
from sluice.common.mongo import Document

log = get_logger(__name__)
LEASES = "service_leases"


class LeaseHeld(RuntimeError):
    """Another service holds the lease (the message names it)."""


def _now() -> datetime:
    return datetime.now(UTC)


class ServiceLease:
    def __init__(self, db: AsyncDatabase[Document], name: str, *, ttl_s: float = 15.0):
        self._leases = db[LEASES]
        self.name = name
        self.ttl_s = ttl_s
        self.holder = f"{socket.gethostname()} pid {os.getpid()} ({uuid.uuid4().hex[:8]})"
        self._expires = _now()

    async def _take(self) -> bool:
        """Take or renew the lease if it is free, expired or ours; whether we hold it now."""
        now = _now()
        expires = now + timedelta(seconds=self.ttl_s)
        try:
            await self._leases.update_one(
                {"_id": self.name, "$or": [{"holder": self.holder}, {"expires_at": {"$lt": now}}]},
                {"$set": {"holder": self.holder, "expires_at": expires}},
                upsert=True,
            )
        except DuplicateKeyError:  # the document exists and another holder's lease runs
            return False
        self._expires = expires
        return True

    async def acquire(self) -> None:
        """Take the lease, waiting out a predecessor's; LeaseHeld if another keeps it."""
        deadline = asyncio.get_running_loop().time() + self.ttl_s + self.ttl_s / 3
        while not await self._take():
            if asyncio.get_running_loop().time() > deadline:
                current = await self._leases.find_one({"_id": self.name}) or {}
                raise LeaseHeld(
                    f"another {self.name} service uses this database: {current.get('holder')} "
                    f"holds its lease (renewed until {current.get('expires_at')}); run one "
                    f"{self.name} service per database"
                )
            await asyncio.sleep(0.5)
        log.info("lease_acquired", lease=self.name, holder=self.holder)

    async def keep(self) -> None:
        """Renew until the lease is lost (returns then); cancel to stop renewing."""
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                if not await self._take():
                    log.error("lease_taken_over", lease=self.name, holder=self.holder)
                    return
            except PyMongoError as exc:
                if _now() >= self._expires:
                    log.error("lease_expired", lease=self.name, error=str(exc))
                    return
                log.warning("lease_renewal_failed", lease=self.name, error=str(exc))

    async def release(self) -> None:
        """Give the lease up at a clean stop, so a successor need not wait for it."""
        await self._leases.delete_one({"_id": self.name, "holder": self.holder})
