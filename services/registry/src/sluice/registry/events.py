"""The registry's events: one thin event per change (kind, name, version).

Subjects: `<prefix>.endpoint.created`, `.deployment.updated`,
`.traffic.changed`, `.keys.regenerated`, `.batch_endpoint.deleted`, ...
Consumers re-read the resource from MongoDB; the payload only says what moved.
"""

from __future__ import annotations

from typing import Protocol

from sluice.common.events import EventPublisher


class ChangeEvents(Protocol):
    async def changed(
        self,
        entity: str,
        verb: str,
        *,
        name: str,
        version: int,
        actor: str,
        endpoint: str | None = None,
        extra: dict[str, object] | None = None,
    ) -> None: ...


class NatsChangeEvents:
    """Publishes change events on JetStream and waits for the stream's ack."""

    def __init__(self, publisher: EventPublisher):
        self._publisher = publisher

    async def changed(
        self,
        entity: str,
        verb: str,
        *,
        name: str,
        version: int,
        actor: str,
        endpoint: str | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        data: dict[str, object] = {"kind": entity, "name": name, "version": version}
        if endpoint is not None:
            data["endpoint"] = endpoint
        data.update(extra or {})
        subject = f"{endpoint}/{name}" if endpoint else name
        await self._publisher.publish(entity, verb, subject=subject, data=data, actor=actor)
