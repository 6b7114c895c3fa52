"""A steady client for tests that change a deployment under load: it tallies every failure.

`SteadyLoad` runs a few threads, each scoring an endpoint in a loop over its
own keep-alive HTTP connection to Envoy's plain-HTTP listener (so each request
costs no TLS handshake and the load is steady). Anything but a 200 is a
failure, and so is a connection error; failures keep their time and text so a
test can say which phase lost requests.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

DEPLOYMENT_HEADER = "azureml-model-deployment"


@dataclass
class Tally:
    ok: int = 0
    served: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


class SteadyLoad:
    """`threads` clients scoring `host` (a virtual host name) through `127.0.0.1:port`."""

    def __init__(
        self,
        port: int,
        host: str,
        key: str,
        body: bytes,
        *,
        threads: int = 4,
        timeout_s: float = 10.0,
    ):
        self._port = port
        self._host = host
        self._headers = {
            "Host": host,
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
        }
        self._body = body
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self.tally = Tally()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, daemon=True, name=f"load-{i}")
            for i in range(threads)
        ]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._timeout + 5)

    @property
    def total(self) -> int:
        with self._lock:
            return self.tally.ok + len(self.tally.failures)

    def failures(self) -> list[str]:
        with self._lock:
            return list(self.tally.failures)

    def wait_requests(self, count: int, deadline_s: float = 60) -> None:
        """Block until `count` more requests were answered (a sign the load is flowing)."""
        target = self.total + count
        end = time.monotonic() + deadline_s
        while self.total < target:
            if time.monotonic() > end:
                raise AssertionError(
                    f"the load stalled: fewer than {count} requests in {deadline_s}s"
                )
            time.sleep(0.02)

    def _loop(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=self._timeout)
            try:
                conn.request("POST", "/score", body=self._body, headers=self._headers)
                response = conn.getresponse()
                payload = response.read()
                status, served = response.status, response.getheader(DEPLOYMENT_HEADER, "?")
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = None
                self._record(f"{time.strftime('%X')} connection: {exc!r}")
                continue
            if status == 200:
                with self._lock:
                    self.tally.ok += 1
                    self.tally.served[served] += 1
            else:
                self._record(f"{time.strftime('%X')} HTTP {status}: {payload[:200]!r}")
        if conn is not None:
            conn.close()

    def _record(self, failure: str) -> None:
        with self._lock:
            self.tally.failures.append(failure)
