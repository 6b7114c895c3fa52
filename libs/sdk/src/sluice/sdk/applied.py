"""Wait until a traffic change is live: the traffic controller's `traffic.applied` event.

The controller publishes `traffic.applied` with the version of every endpoint
in the snapshot Envoy ACKed. `AppliedWatcher` subscribes *before* the change
is made (so the event cannot slip by), then `wait(endpoint, version)` returns
once a snapshot with that endpoint at that version or later is live, or
raises after a deadline (no gateway connected, for instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from types import TracebackType

import nats
import nats.errors


class NotApplied(TimeoutError):
    """The change was not confirmed; the message says why and what to do."""


class EventBusDown(NotApplied):
    """NATS cannot be reached, so no confirmation can arrive: raised before any change."""


class AppliedWatcher:
    def __init__(self, nats_url: str, subject_prefix: str):
        self._url = nats_url
        self._subjects = (f"{subject_prefix}.traffic.applied", f"{subject_prefix}.traffic.rejected")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._seen: dict[str, int] = {}
        self._rejected: dict[str, str] = {}
        self._changed = threading.Condition()
        self._nc: nats.NATS | None = None

    def __enter__(self) -> AppliedWatcher:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._subscribe(), self._loop).result(timeout=30)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            self.__exit__(None, None, None)
            raise EventBusDown(
                f"NATS, the platform's event bus, is not reachable at {self._url}, so the "
                "gateway's confirmation cannot arrive; nothing was changed. Check `sluice "
                "status` (the supervisor restarts it) and retry, or pass --no-wait to make "
                "the change without waiting for the gateway"
            ) from exc
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._nc is not None and not self._nc.is_closed:
            asyncio.run_coroutine_threadsafe(self._nc.close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _subscribe(self) -> None:
        # nats-py retries a refused first connection forever, reporting each try to
        # error_cb: the first report (or 5 s) ends the attempt, so the CLI fails at once.
        first_error: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

        async def on_error(exc: Exception) -> None:
            if not first_error.done():
                first_error.set_result(exc)

        connecting = asyncio.ensure_future(
            nats.connect(self._url, name="sluice-cli", connect_timeout=2, error_cb=on_error)
        )
        await asyncio.wait({connecting, first_error}, timeout=5, return_when="FIRST_COMPLETED")
        if not connecting.done() or connecting.exception() is not None:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connecting
            cause = first_error.result() if first_error.done() else TimeoutError("no answer in 5s")
            raise ConnectionError(f"cannot connect to NATS: {cause}")
        self._nc = connecting.result()
        for subject in self._subjects:
            await self._nc.subscribe(subject, cb=self._on_message)

    async def _on_message(self, msg: nats.aio.msg.Msg) -> None:
        data = json.loads(msg.data).get("data", {})
        with self._changed:
            for name, version in (data.get("endpoints") or {}).items():
                if msg.subject.endswith(".rejected"):
                    self._rejected[name] = str(data.get("error", "rejected by Envoy"))
                else:
                    self._seen[name] = max(self._seen.get(name, 0), int(version))
            self._changed.notify_all()

    def wait(self, endpoint: str, version: int, timeout_s: float = 30.0) -> None:
        with self._changed:
            done = self._changed.wait_for(
                lambda: self._seen.get(endpoint, 0) >= version or endpoint in self._rejected,
                timeout=timeout_s,
            )
        if endpoint in self._rejected:
            raise NotApplied(f"the gateway rejected the change: {self._rejected[endpoint]}")
        if not done:
            raise NotApplied(
                f"the change to {endpoint} is stored (version {version}) but the gateway has "
                f"not applied it within {timeout_s:.0f}s; is the traffic controller running "
                "(`sluice status`)?"
            )
