"""One batch service per database: the lease (real MongoDB)."""

from __future__ import annotations

import asyncio

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from sluice.batch.lease import LeaseHeld, ServiceLease
from sluice.common.mongo import Document


async def test_a_held_lease_refuses_a_second_service_naming_the_holder(
    mongo_db: AsyncDatabase[Document],
) -> None:
    first = ServiceLease(mongo_db, "batch", ttl_s=30)
    await first.acquire()
    second = ServiceLease(mongo_db, "batch", ttl_s=0.6)
    with pytest.raises(LeaseHeld, match="run one batch service per database") as refused:
        await second.acquire()
    assert first.holder in str(refused.value)
    # A clean stop gives it up: the next service starts at once.
    await first.release()
    await asyncio.wait_for(second.acquire(), timeout=5)


async def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it(
    mongo_db: AsyncDatabase[Document],
) -> None:
    stalled = ServiceLease(mongo_db, "batch", ttl_s=0.6)
    await stalled.acquire()  # and never renews (a stalled or dead process)
    successor = ServiceLease(mongo_db, "batch", ttl_s=5)
    await asyncio.wait_for(successor.acquire(), timeout=5)  # once the old one expired
    # The old holder, renewing again, finds the lease gone and stops (keep() returns).
    await asyncio.wait_for(stalled.keep(), timeout=5)
