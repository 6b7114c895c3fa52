"""Keep one bad endpoint from taking the others down: what to publish after Envoy's NACKs.

Envoy accepts or rejects a whole configuration. This remembers, per key (an
endpoint's name, or GATEWAY for gateway-wide settings), the state in the last
ACKed configuration. After a NACK, the keys that changed since then are the
suspects:

- one suspect: its new state is rejected (not tried again until it changes
  again) and it keeps serving its last accepted state;
- several: the upper half is held back at its accepted state and the rest
  tried; the held half gets its turn after the next ACK. A binary search: the
  culprit is alone after about log2(suspects) pushes.

Pure bookkeeping on values compared with `==`, so it is table-tested on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

GATEWAY = ""  # the key of gateway-wide settings (no endpoint has an empty name)
S = TypeVar("S")


class NackIsolation(Generic[S]):
    def __init__(self) -> None:
        self._accepted: dict[str, S] = {}
        self._rejected: dict[str, S] = {}
        self._held: set[str] = set()

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    def accepted_state(self, key: str) -> S | None:
        return self._accepted.get(key)

    def choose(self, desired: Mapping[str, S]) -> dict[str, S]:
        """The state to publish per key: the desired one, unless it is exactly what Envoy
        rejected or the key is held back; then the last accepted one (a key never accepted
        is left out)."""
        chosen = {}
        for key, want in desired.items():
            rejected = self._rejected.get(key)
            if rejected is not None and rejected != want:
                del self._rejected[key]  # it changed since: worth another try
                rejected = None
            if key in self._held or rejected is not None:
                if key in self._accepted:
                    chosen[key] = self._accepted[key]
            else:
                chosen[key] = want
        return chosen

    def on_ack(self, published: Mapping[str, S]) -> bool:
        """Envoy took `published`. True when held suspects were released (publish again)."""
        self._accepted = dict(published)
        released = bool(self._held)
        self._held.clear()
        return released

    def on_nack(self, published: Mapping[str, S]) -> list[str]:
        """Envoy rejected `published`: return the suspects (sorted, GATEWAY first)."""
        suspects = sorted(
            key for key, state in published.items() if self._accepted.get(key) != state
        )
        if len(suspects) == 1:
            self._rejected[suspects[0]] = published[suspects[0]]
        elif suspects:
            self._held.update(suspects[len(suspects) // 2 :])
        return suspects
