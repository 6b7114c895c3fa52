"""Transactional outbox: an event is stored in MongoDB with the change it describes.

A service writes its state change and the change's event documents in one
MongoDB transaction (SecantusDB runs multi-document transactions), so either
both are stored or neither is. `OutboxRelay` then publishes stored events to
JetStream in the order they were written, with the event id as `Nats-Msg-Id`
(JetStream drops a repeat within its duplicate window), and deletes each one
after the stream acknowledged it. NATS being down delays events; it never
fails the call that made the change, and never loses or invents an event.

Why not change streams: they would turn document diffs into events after the
fact, losing who made the change (`actor`, `correlationid`) and what it meant
(`traffic.changed` vs `endpoint.updated`), and need a persisted resume token;
docs/architecture.md has the full argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.events.catalogue import EventSpec, PayloadT
from sluice.common.events.nats import EventPublisher
from sluice.common.log import get_logger
from sluice.common.mongo import Document

log = get_logger(__name__)
OUTBOX = "outbox"
BATCH = 100
_last_sequence = 0


def _sequence() -> int:
    """Nanoseconds since the epoch, strictly increasing within a process: the relay's order."""
    global _last_sequence
    _last_sequence = max(_last_sequence + 1, time.time_ns())
    return _last_sequence


@dataclass
class Transaction:
    """A MongoDB transaction in progress; `emit` adds events that commit with it."""

    session: AsyncClientSession
    _publisher: EventPublisher
    _events: list[Document] = field(default_factory=list)

    def emit(
        self, spec: EventSpec[PayloadT], data: PayloadT, *, subject: str | None, actor: str
    ) -> None:
        self._events.append(_outbox_document(self._publisher, spec, data, subject, actor))


def _outbox_document(
    publisher: EventPublisher,
    spec: EventSpec[PayloadT],
    data: PayloadT,
    subject: str | None,
    actor: str,
) -> Document:
    event = publisher.envelope(spec, data, subject=subject, actor=actor)
    return {
        "_id": event.id,
        "source": publisher.source,
        "seq": _sequence(),
        "subject": spec.subject(publisher.prefix),
        "body": event.model_dump_json(),
    }


class Outbox:
    """The `outbox` collection of one service (`publisher.source`)."""

    def __init__(self, db: AsyncDatabase[Document], publisher: EventPublisher):
        self._client = db.client
        self._c = db[OUTBOX]
        self._publisher = publisher
        self.stored = asyncio.Event()  # set after each commit: wakes the relay

    async def ensure_indexes(self) -> None:
        await self._c.create_index([("source", ASCENDING), ("seq", ASCENDING)])

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Everything written with `tx.session` inside the block commits with `tx`'s events."""
        async with self._client.start_session() as session, await session.start_transaction():
            tx = Transaction(session, self._publisher)
            yield tx
            if tx._events:
                await self._c.insert_many(tx._events, session=session)
        self.stored.set()

    async def pending(self) -> list[Document]:
        query = {"source": self._publisher.source}
        return await self._c.find(query).sort("seq", ASCENDING).limit(BATCH).to_list()

    async def delivered(self, event_ids: list[str]) -> None:
        await self._c.delete_many({"_id": {"$in": event_ids}})


class OutboxRelay:
    """Publishes stored events to JetStream, oldest first; retries until NATS takes them."""

    def __init__(self, outbox: Outbox, publisher: EventPublisher, *, poll_s: float = 1.0):
        self._outbox = outbox
        self._publisher = publisher
        self._poll_s = poll_s

    async def drain(self) -> int:
        """Publish everything pending; the number published. Raises when NATS or Mongo fails."""
        sent = 0
        while batch := await self._outbox.pending():
            done: list[str] = []
            try:
                for raw in batch:
                    await self._publisher.send(
                        str(raw["subject"]), str(raw["body"]), str(raw["_id"])
                    )
                    done.append(str(raw["_id"]))
            finally:
                # One delete per batch; a crash before it re-publishes ids JetStream drops.
                if done:
                    await self._outbox.delivered(done)
            sent += len(done)
        return sent

    async def run(self) -> None:
        """Drain after every commit, and every `poll_s` for events left by a failure or restart."""
        failing = False
        while True:
            self._outbox.stored.clear()
            try:
                await self.drain()
                if failing:
                    log.info("outbox_relay_recovered")
                failing = False
            except Exception as exc:  # NATS or MongoDB away: keep the events, try again later
                if not failing:
                    log.warning("outbox_relay_failing", error=f"{type(exc).__name__}: {exc}")
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.stored.wait(), self._poll_s)
