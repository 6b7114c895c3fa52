"""Azure's data collector: inputs and outputs of sampled requests, as JSON lines on disk.

A deployment's `data_collector` (docs/tracing.md) turns this on. On the request
path the server only draws the sample (`sample()`, one `random()`) and appends
`(collection, correlation id, request id, time, bytes)` to a bounded queue; a
writer thread turns the queue into Azure's landing format every `FLUSH_S`:

    <folder>/<collection>/<yyyy>/<MM>/<dd>/<HH>/<instance>.jsonl    (rolling_rate hour)

`folder` is `<datastore>/workspaceblobstore/modelDataCollector/<endpoint>/<deployment>`,
Azure's default path; `minute` adds `<mm>/`, `day` stops at `<dd>/`. Each line is
one CloudEvents-shaped record as Azure writes it (`specversion`, `id`, `source`,
`type: azureml.inference.<collection>`, `time`, `data`, `correlationid`,
`xrequestid`); the input and output of one request share the `correlationid`.
When a collection rolls over to its next partition, and when the server stops,
the file it closed is also written as `<instance>.parquet` beside it, by a child
process (`sluice.inference.parquet`) so that pyarrow never loads in the server.

The writer is on the server's core too, so each record is made cheaply (bench/tracing
measures it): the record's fixed parts are JSON made once and the line is put together
with one bytes `%`, a JSON payload is checked with one parse and written as it came
(not parsed and serialized again), the time is formatted once per
second, the files are grouped by (collection, minute) keys rather than `Path`s, and a
correlation id is a version-4 UUID from `random` (unique, not secret: no system call).

Nothing here can fail a request: a full queue, a folder over its byte quota
(`max_bytes`, shared by the deployment's instances and re-measured every
`RESCAN_S`) or a failing disk drops the record and counts it by reason. The
counts are written to `<folder>/_stats/<instance>.json` (read by
`sluice online-deployment collected`) and exported as
`sluice_inference_collected_dropped_total`.
"""

from __future__ import annotations

import base64
import contextlib
import random
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

FLUSH_S = 0.25
RESCAN_S = 10.0
MAX_QUEUED = 10_000  # records waiting for the writer; more are dropped ("queue_full")
DEFAULT_MAX_BYTES = 1024**3
STATS_FOLDER = "_stats"
PARTITIONS = {"minute": "%Y/%m/%d/%H/%M", "hour": "%Y/%m/%d/%H", "day": "%Y/%m/%d"}
# A record (Azure's fields, in its order); `data` is last but for `dataencoding` and extras.
RECORD = (
    b'{"specversion":"1.0","id":"%s-%s","source":%s,"type":%s,"datacontenttype":%s,'
    b'"time":"%s","correlationid":"%s","xrequestid":%s,"contentrange":"bytes 0-%d/%d",'
    b'"agent":"sluice-inference","data":%s%s}\n'
)
# A version-4, variant-1 UUID (RFC 9562) from 128 random bits: clear these, set those.
UUID4_CLEAR = (0xF000 << 64) | (0xC000 << 48)
UUID4_SET = (0x4000 << 64) | (0x8000 << 48)

log = structlog.get_logger("sluice.inference.collector")


@dataclass(frozen=True)
class CollectorSettings:
    folder: Path
    collections: frozenset[str]
    sampling_rate: float = 1.0
    rolling_rate: str = "hour"
    max_bytes: int = DEFAULT_MAX_BYTES
    instance: str = "instance"
    source: str = ""  # the deployment's Azure-style id


# (collection, correlation id, request id, unix time, payload, extra fields)
Item = tuple[str, str, str, float, bytes, dict[str, Any] | None]


class DataCollector:
    """Samples requests and writes their payloads off the request path."""

    def __init__(
        self, settings: CollectorSettings, on_drop: Callable[[str, int], None] = lambda r, n: None
    ) -> None:
        self.settings = settings
        self.inputs = "model_inputs" in settings.collections
        self.outputs = "model_outputs" in settings.collections
        self.requests = "request" in settings.collections
        self.responses = "response" in settings.collections
        self.written = 0
        self.dropped: Counter[str] = Counter()
        self._queue: deque[Item] = deque()
        self._on_drop = on_drop
        self._wake = threading.Event()
        self._stopping = False
        self._used = 0
        self._scanned_at = 0.0
        self._paths: dict[tuple[str, int], Path] = {}  # (collection, minute) -> its file
        self._current: dict[str, Path] = {}  # collection -> the file it writes now
        self._current_key: dict[str, tuple[str, int]] = {}  # collection -> its last key
        self._second: tuple[int, str] = (-1, "")  # the last second formatted, and its text
        self._types = {name: f"azureml.inference.{name}" for name in settings.collections}
        self._type_json: dict[str, bytes] = {}  # collection -> its `type`, as JSON
        self._source = orjson.dumps(settings.source)
        self._converting: list[subprocess.Popen[bytes]] = []  # Parquet writers (parquet.py)
        self._thread = threading.Thread(target=self._loop, name="collector", daemon=True)

    def start(self) -> None:
        self.settings.folder.mkdir(parents=True, exist_ok=True)
        self._rescan()
        self._thread.start()
        log.info(
            "collecting",
            folder=str(self.settings.folder),
            collections=sorted(self.settings.collections),
            sampling_rate=self.settings.sampling_rate,
        )

    def close(self) -> None:
        """Write what is queued, stop the writer, and close the open files as Parquet."""
        self._stopping = True
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        else:  # never started (tests): write here
            self.flush()
        self._to_parquet(list(self._current.values()))
        self._current.clear()
        self._current_key.clear()
        for proc in self._converting:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self._reap()

    # ---- request path ----------------------------------------------------------------------

    def sample(self) -> str | None:
        """A correlation id when this request is collected, else None (Azure's rule)."""
        rate = self.settings.sampling_rate
        if rate < 1.0 and rate <= random.random():  # noqa: S311 - sampling, not security
            return None
        bits = random.getrandbits(128) & ~UUID4_CLEAR | UUID4_SET
        h = f"{bits:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def add(
        self,
        collection: str,
        correlation_id: str,
        request_id: str,
        payload: bytes,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self._drop("queue_full")
            return
        self._queue.append((collection, correlation_id, request_id, time.time(), payload, extra))

    # ---- writer thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            stopping = self._stopping
            try:
                self.flush()
            except Exception:  # the writer must survive anything; requests never see it
                log.exception("collector_flush_failed")
            if stopping:
                return

    def flush(self) -> None:
        """Write every queued record (called by the writer thread, and by tests)."""
        if not self._queue:
            return
        if time.monotonic() - self._scanned_at > RESCAN_S:
            self._rescan()
        # (collection, minute) -> its lines, one buffer each: thousands of lines kept as
        # bytes objects until the write cost twice as much per record (allocator churn).
        batches: dict[tuple[str, int], bytearray] = {}
        counts: Counter[tuple[str, int]] = Counter()
        rolled: list[Path] = []  # files closed by this flush (their partition has passed)
        limit = self.settings.max_bytes
        while self._queue:
            item = self._queue.popleft()
            line = self._line(item)
            if self._used + len(line) > limit:
                self._drop("quota")
                continue
            self._used += len(line)
            collection = item[0]
            key = (collection, int(item[3]) // 60)
            buffer = batches.get(key)
            if buffer is None:
                buffer = batches[key] = bytearray()
            buffer += line
            counts[key] += 1
            if key != self._current_key.get(collection):  # a new minute: a new file?
                self._current_key[collection] = key
                path = self._path(key)
                previous = self._current.get(collection)
                if previous != path:
                    self._current[collection] = path
                    if previous is not None:
                        rolled.append(previous)
        files: dict[Path, list[tuple[str, int]]] = {}
        for key in batches:
            files.setdefault(self._path(key), []).append(key)
        for path, keys in files.items():
            lines = sum(counts[key] for key in keys)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("ab") as out:
                    for key in keys:
                        out.write(batches[key])
                self.written += lines
            except OSError as exc:  # ENOSPC, EDQUOT, a folder made read-only...
                self._drop("write_error", lines)
                self._used -= sum(len(batches[key]) for key in keys)
                log.warning("collector_write_failed", path=str(path), error=str(exc))
        self._to_parquet([path for path in rolled if path not in self._current.values()])
        self._reap()
        self._write_stats()

    def _to_parquet(self, paths: list[Path]) -> None:
        """Closed files as Parquet beside them, in a child process (never on a request)."""
        paths = [path for path in paths if path.exists()]
        if not paths:
            return
        try:
            self._converting.append(
                subprocess.Popen(
                    [sys.executable, "-m", "sluice.inference.parquet", *map(str, paths)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        except OSError as exc:
            log.warning("collector_parquet_failed", files=[str(p) for p in paths], error=str(exc))

    def _reap(self) -> None:
        running = []
        for proc in self._converting:
            if proc.poll() is None:
                running.append(proc)
            elif proc.returncode != 0:
                error = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                log.warning("collector_parquet_failed", error=error.strip()[-2000:])
        self._converting = running

    def _line(self, item: Item) -> bytes:
        """One record as Azure writes it, as a JSON line: the fixed parts are JSON made once
        (per collector or collection), the payload is written as it came when it is JSON on
        one line, and the rest goes in with one bytes `%` (what orjson.dumps of the record's
        dict would write, byte for byte: test_collector.py, at ~2/3 of its cost)."""
        collection, correlation_id, request_id, at, payload, extra = item
        kind, tail = b'"application/json"', b""
        try:
            data = _json(payload) if payload else b"null"
        except orjson.JSONDecodeError:
            try:
                data = orjson.dumps(payload.decode("utf-8"))
                kind = b'"text/plain"'
            except UnicodeDecodeError:
                data = orjson.dumps(base64.b64encode(payload).decode())
                kind, tail = b'"application/octet-stream"', b',"dataencoding":"base64"'
        if extra:
            tail += b"," + orjson.dumps(extra)[1:-1]
        kind_of = self._type_json.get(collection)
        if kind_of is None:
            name = self._types.get(collection) or f"azureml.inference.{collection}"
            kind_of = self._type_json[collection] = orjson.dumps(name)
        cid = correlation_id.encode()
        size = len(payload)
        return RECORD % (
            cid,
            collection.encode(),
            self._source,
            kind_of,
            kind,
            self._time(at).encode(),
            cid,
            orjson.dumps(request_id),
            max(size - 1, 0),
            size,
            data,
            tail,
        )

    def _time(self, at: float) -> str:
        """`at` as Azure writes it: ISO 8601 in UTC, to the millisecond."""
        ms = int(at * 1000)
        second, millis = divmod(ms, 1000)
        if second != self._second[0]:
            text = datetime.fromtimestamp(second, UTC).isoformat().removesuffix("+00:00")
            self._second = (second, text)
        return f"{self._second[1]}.{millis:03d}+00:00"

    def _path(self, key: tuple[str, int]) -> Path:
        """The file of (collection, minute): partitions are minutes at the finest."""
        path = self._paths.get(key)
        if path is None:
            if len(self._paths) > 64:
                self._paths.clear()
            collection, minute = key
            partition = time.strftime(
                PARTITIONS[self.settings.rolling_rate], time.gmtime(minute * 60)
            )
            name = f"{self.settings.instance}.jsonl"
            path = self._paths[key] = self.settings.folder / collection / partition / name
        return path

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count
        self._on_drop(reason, count)

    def _rescan(self) -> None:
        """The bytes the deployment's instances have written so far (the quota is theirs)."""
        used = 0
        for pattern in ("*.jsonl", "*.parquet"):
            for path in self.settings.folder.rglob(pattern):
                with contextlib.suppress(OSError):
                    used += path.stat().st_size
        self._used = used
        self._scanned_at = time.monotonic()

    def _write_stats(self) -> None:
        folder = self.settings.folder / STATS_FOLDER
        stats = {
            "instance": self.settings.instance,
            "written": self.written,
            "dropped": dict(self.dropped),
        }
        try:
            folder.mkdir(exist_ok=True)
            partial = folder / f".{self.settings.instance}.json.partial"
            partial.write_bytes(orjson.dumps(stats))
            partial.replace(folder / f"{self.settings.instance}.json")
        except OSError as exc:
            log.warning("collector_stats_failed", error=str(exc))


def _json(payload: bytes) -> bytes:
    """A JSON payload as the record's `data`: checked by one parse and kept as it came,
    unless it spans lines (a JSON-lines record is one line): then parsed and written again.
    orjson.JSONDecodeError when it is not JSON."""
    parsed = orjson.loads(payload)
    if b"\n" in payload or b"\r" in payload:
        return orjson.dumps(parsed)
    return payload
