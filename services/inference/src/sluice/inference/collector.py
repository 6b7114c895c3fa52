"""Azure's data collector: inputs and outputs of sampled requests, as JSON lines on disk.

A deployment's `data_collector` (docs/tracing.md) turns this on. It is two parts in two
processes, as Azure runs its collector beside the inference server:

- in the server, `CollectorFeed`: on the request path it only draws the sample
  (`sample()`, one `random()`, and the request's number: its correlation id is the
  server's random prefix and that number, written as text by the writer) and appends
  `(collection, number, request id, time, bytes, extra)` to a bounded queue; a thread
  ships the queue to the writer every `FLUSH_S` (20 ms) as one `marshal` frame on a pipe
  (microseconds per record, in C): small frames often, so that the writer works in
  short slices, not in bursts that slow what shares its core;
- the writer, a child process (`python -m sluice.inference.collector`, `DataCollector`),
  turns the records into Azure's landing format:

    <folder>/<collection>/<yyyy>/<MM>/<dd>/<HH>/<instance>.jsonl    (rolling_rate hour)

`folder` is `<datastore>/workspaceblobstore/modelDataCollector/<endpoint>/<deployment>`,
Azure's default path; `minute` adds `<mm>/`, `day` stops at `<dd>/`. Each line is
one CloudEvents-shaped record as Azure writes it (`specversion`, `id`, `source`,
`type: azureml.inference.<collection>`, `time`, `data`, `correlationid`,
`xrequestid`); the input and output of one request share the `correlationid`.
When a collection rolls over to its next partition, and when the server stops,
the file it closed is also written as `<instance>.parquet` beside it, by a child
process (`sluice.inference.parquet`) so that pyarrow never loads in the writer.

Formatting and writing records cost the server's core 4 us per record when a thread of
the server did them (bench/README.md, tracing); in the writer they leave the server's
interpreter, its GIL and its caches. The writer still makes each record cheaply: the
record's fixed parts are JSON made once (per collector or collection) and the line is
put together with one bytes `%`, a JSON payload is checked with one parse and written as
it came (not parsed and serialized again), the time's text is made once per millisecond,
a flush appends each line to its (collection, minute) buffer and counts the lines per
buffer, the stats file is written at most once a second (120 us a time; and when the
feed goes idle), and a correlation id is a version-4 UUID made of the server's random
prefix (`id_prefix`, 74 random bits drawn at its start) and the request's number (the last 12
hex digits): unique, not secret, and written by the same `%` as the rest (as 128 random
bits made text per request, it cost the writer 0.6 us per record; in the server, between
two run() calls, 3.2 us per request: bench/tracing/cold.py --collect).

The folder keeps at most `max_bytes` (shared by the deployment's instances and
re-measured every `RESCAN_S`) as a ring buffer: a record that would go over it first
makes the writer delete the oldest *closed* partitions (`_evict`: every instance's
`.jsonl` and `.parquet` of a partition whose period ended `CLOSED_GRACE_S` ago, never a
file being written), from the list of partitions its last re-measure made (no disk scan
per record), and counts what it deleted (`evicted`: partitions, files, bytes, and the
end of the newest one deleted).

Nothing here can fail a request: a full queue, a folder over its quota with nothing
old left to delete, a failing disk or a writer that died drops the record and counts it by
reason. The writer's counts are written to `<folder>/_stats/<instance>.json` (read by
`sluice online-deployment collected`); the writer reports each drop to the server on
its stdout (`<reason> <count>` lines), which exports them all as
`sluice_inference_collected_dropped_total`. The writer ends when its stdin does (the
server closed it, or died): it writes what it was sent and closes its files first.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

from sluice.common.writer_process import WriterProcess, frames

# The feed ships what is queued every FLUSH_S while records come, every IDLE_S when none
# came. Through the gateway on a 2-core host, frames every 0.25 s made the writer work in
# bursts of ~10 ms beside Envoy, and the server went short of requests (its core idle 2%
# of the time, not 0.5%): 94% of off's requests/s; every 0.02 s, 96-98% (bench/README.md,
# tracing).
FLUSH_S = 0.02
IDLE_S = 0.25
RESCAN_S = 10.0
# A partition may be evicted once its period (minute, hour, day) ended this long ago: an
# instance's last records of it (queued, or sent by a writer that lagged) have landed and its
# file has been closed and converted to Parquet.
CLOSED_GRACE_S = 60.0
STATS_S = 1.0  # the writer's stats file: at most this often, at once when it drops
MAX_QUEUED = 10_000  # records waiting for the writer; more are dropped ("queue_full")
DEFAULT_MAX_BYTES = 1024**3
STATS_FOLDER = "_stats"
PARTITIONS = {"minute": "%Y/%m/%d/%H/%M", "hour": "%Y/%m/%d/%H", "day": "%Y/%m/%d"}
# A record (Azure's fields, in its order); `data` is last but for `dataencoding` and extras.
# What one collection's records share, from "-<collection>" (the end of `id`) to
# "datacontenttype": (`DataCollector._head`), is made once and goes in as one part; a
# correlation id is its server's prefix and the request's number (`%s%012x`).
RECORD = (
    b'{"specversion":"1.0","id":"%s%012x%s%s,"time":"%s","correlationid":"%s%012x",'
    b'"xrequestid":%s,"contentrange":"bytes 0-%d/%d","agent":"sluice-inference",'
    b'"data":%s%s}\n'
)
JSON_KIND = b'"application/json"'

log = structlog.get_logger("sluice.inference.collector")


def new_id_prefix() -> str:
    """The first 24 characters of a random version-4 UUID, `xxxxxxxx-xxxx-4xxx-Nxxx-`
    (74 random bits): a server's correlation ids are this and a 12-hex-digit number."""
    return str(uuid.uuid4())[:24]


@dataclass(frozen=True)
class CollectorSettings:
    folder: Path
    collections: frozenset[str]
    sampling_rate: float = 1.0
    rolling_rate: str = "hour"
    max_bytes: int = DEFAULT_MAX_BYTES
    instance: str = "instance"
    source: str = ""  # the deployment's Azure-style id
    id_prefix: str = field(default_factory=new_id_prefix)  # of its correlation ids


# (collection, the request's number (its correlation id's end), request id, unix time,
# payload, extras)
Item = tuple[str, int, str, float, bytes, dict[str, Any] | None]


class _Queue:
    """What both sides have: the collections, the sample, a bounded queue, drop counts."""

    def __init__(
        self, settings: CollectorSettings, on_drop: Callable[[str, int], None] = lambda r, n: None
    ) -> None:
        self.settings = settings
        self.inputs = "model_inputs" in settings.collections
        self.outputs = "model_outputs" in settings.collections
        self.requests = "request" in settings.collections
        self.responses = "response" in settings.collections
        self.dropped: Counter[str] = Counter()
        self._queue: deque[Item] = deque()
        self._on_drop = on_drop
        self._numbers = itertools.count()

    def sample(self) -> int | None:
        """The request's number, the end of its correlation id (`correlation_id`), when
        this request is collected, else None (Azure's rule)."""
        rate = self.settings.sampling_rate
        if rate < 1.0 and rate <= random.random():  # noqa: S311 - sampling, not security
            return None
        return next(self._numbers)

    def correlation_id(self, number: int) -> str:
        """The correlation id of the request of that number, as records carry it: a
        version-4 UUID, the settings' `id_prefix` and the number in 12 hex digits."""
        return f"{self.settings.id_prefix}{number:012x}"

    def add(
        self,
        collection: str,
        correlation_id: int,
        request_id: str,
        payload: bytes,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Queue one record (on the request path: one append)."""
        if len(self._queue) >= MAX_QUEUED:
            self._drop("queue_full")
            return
        self._queue.append((collection, correlation_id, request_id, time.time(), payload, extra))

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count
        self._on_drop(reason, count)


class CollectorFeed(_Queue):
    """The server's side: samples and queues records, and ships them to the writer process."""

    def __init__(
        self, settings: CollectorSettings, on_drop: Callable[[str, int], None] = lambda r, n: None
    ) -> None:
        super().__init__(settings, on_drop)
        # The settings as JSON for the writer's argv (`main` reads them back).
        config = {
            **asdict(settings),
            "folder": str(settings.folder),
            "collections": sorted(settings.collections),
        }
        self.writer = WriterProcess(
            [sys.executable, "-m", "sluice.inference.collector", json.dumps(config)],
            on_line=self._writer_dropped,
        )
        self._wake = threading.Event()
        self._stopping = False
        self._unsettled = False  # records were shipped since the writer was told of a pause
        self._thread = threading.Thread(target=self._loop, name="collector-feed", daemon=True)

    def start(self) -> None:
        """Start the writer and the thread that feeds it (OSError: the folder cannot be made)."""
        self.settings.folder.mkdir(parents=True, exist_ok=True)
        self.writer.start()
        self._thread.start()
        log.info(
            "collecting",
            folder=str(self.settings.folder),
            collections=sorted(self.settings.collections),
            sampling_rate=self.settings.sampling_rate,
        )

    def close(self) -> None:
        """Ship what is queued, then wait for the writer to write it all (and to close its
        files as Parquet)."""
        self._stopping = True
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        else:
            self.ship()
        self.writer.close()

    def ship(self) -> int:
        """Send every queued record to the writer, as one frame (the feed's thread calls
        it); how many there were."""
        queue = self._queue
        if not queue:
            return 0
        pop = queue.popleft
        items = [pop() for _ in range(len(queue))]
        self._unsettled = True
        if not self.writer.send(items):
            self._drop("write_error", len(items))
        return len(items)

    def _writer_dropped(self, line: bytes) -> None:
        """A `<reason> <count>` line of the writer."""
        reason, _, count = line.decode(errors="replace").strip().partition(" ")
        with contextlib.suppress(ValueError):
            self._drop(reason, int(count))

    def _loop(self) -> None:
        wait = IDLE_S
        while True:
            self._wake.wait(wait)
            self._wake.clear()
            stopping = self._stopping
            try:
                shipped = self.ship()
                if not shipped and self._unsettled:  # records stopped coming:
                    self._unsettled = False
                    self.writer.send([])  # the writer brings its stats file up to date
                wait = FLUSH_S if shipped else IDLE_S
            except Exception:  # the feed must survive anything; requests never see it
                log.exception("collector_ship_failed")
            if stopping:
                return


class DataCollector(_Queue):
    """The writer: queued records to Azure's files (in the writer process: `main`)."""

    def __init__(
        self, settings: CollectorSettings, on_drop: Callable[[str, int], None] = lambda r, n: None
    ) -> None:
        super().__init__(settings, on_drop)
        self.written = 0
        # What the quota made this writer delete: partitions, files, bytes; and the end of
        # the newest partition deleted (unix time; 0: none yet).
        self.evicted: Counter[str] = Counter()
        self.evicted_before = 0.0
        self._used = 0
        self._scanned_at = 0.0
        # The partitions the last re-measure found, newest first (popped from the end):
        # (start, end, folder, bytes); and when the first of them may be evicted.
        self._partitions: list[tuple[float, float, Path, int]] = []
        self._evictable_at = math.inf
        self._paths: dict[tuple[str, int], Path] = {}  # (collection, minute) -> its file
        self._current: dict[str, Path] = {}  # collection -> the file it writes now
        self._current_key: dict[str, tuple[str, int]] = {}  # collection -> its last key
        self._second: tuple[int, str] = (-1, "")  # the last second formatted, and its text
        self._milli: tuple[int, bytes] = (-1, b"")  # the last millisecond, and its text
        self._heads: dict[str, bytes] = {}  # collection -> its records' shared part
        self._prefix = settings.id_prefix.encode()  # of correlation ids
        self._source = orjson.dumps(settings.source)
        self._converting: list[subprocess.Popen[bytes]] = []  # Parquet writers (parquet.py)
        self._stats_at = -math.inf  # when the stats file was written (never yet), and what it shows
        self._shown: tuple[int, Counter[str], Counter[str]] = (0, Counter(), Counter())

    def open(self) -> None:
        """Make the folder, measure what is in it and, when a writer of this instance ran
        before (it died and this one took over), go on from its counts."""
        self.settings.folder.mkdir(parents=True, exist_ok=True)
        self._rescan()
        stats = self.settings.folder / STATS_FOLDER / f"{self.settings.instance}.json"
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
            before = orjson.loads(stats.read_bytes())
            self.written = int(before["written"])
            self.dropped.update({str(k): int(v) for k, v in before["dropped"].items()})
            self.evicted.update({str(k): int(v) for k, v in before.get("evicted", {}).items()})
            if before.get("evicted_before"):
                self.evicted_before = datetime.fromisoformat(before["evicted_before"]).timestamp()
            self._shown = (self.written, Counter(self.dropped), Counter(self.evicted))

    def extend(self, items: list[Item]) -> None:
        """Records the feed sent (the queue bound is the feed's)."""
        self._queue.extend(items)

    def close(self) -> None:
        """Write what is queued and close the open files as Parquet."""
        self.flush()
        if self._stats_behind():
            self._write_stats()
        self._to_parquet(list(self._current.values()))
        self._current.clear()
        self._current_key.clear()
        for proc in self._converting:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self._reap()

    def flush(self) -> None:
        """Write every queued record (none: the feed is idle, the stats file catches up)."""
        if not self._queue:
            if self._stats_behind():
                self._write_stats()
            return
        if time.monotonic() - self._scanned_at > RESCAN_S:
            self._rescan()
        batches = self._format(self._queue)
        self._queue.clear()
        rolled: list[Path] = []  # files closed by this flush (their partition has passed)
        for key in batches:  # in time order
            collection = key[0]
            if key != self._current_key.get(collection):  # a new minute: a new file?
                self._current_key[collection] = key
                path = self._path(key)
                previous = self._current.get(collection)
                if previous != path:
                    self._current[collection] = path
                    if previous is not None:
                        rolled.append(previous)
        # A line is one "\n" (a payload that spans lines is written again on one: `_json`).
        counts = {key: buffer.count(b"\n") for key, buffer in batches.items()}
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
        if self.dropped != self._shown[1] or time.monotonic() - self._stats_at >= STATS_S:
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

    def _format(self, items: Iterable[Item]) -> dict[tuple[str, int], bytearray]:
        """The records as lines, by (collection, minute) in time order, one buffer each
        (thousands of lines kept as bytes objects made the write cost twice as much per
        record: allocator churn); a record over the quota first evicts the oldest closed
        partitions (`_evict`), and is dropped when that frees too little.

        The usual record (a JSON payload on one line, no extras) is made here at half the
        cost of `_line`, which makes the others: its payload checked by one parse and
        written as it came, the time's text made once per millisecond, one bytes `%`."""
        loads, dumps, not_json = orjson.loads, orjson.dumps, orjson.JSONDecodeError
        heads, prefix = self._heads, self._prefix
        batches: dict[tuple[str, int], bytearray] = {}
        buffers: dict[str, bytearray] = {}  # collection -> its buffer for this minute
        limit, used = self.settings.max_bytes, self._used
        minute, last_ms, now = -1, -1, b""
        for item in items:
            collection, number, rid, at, payload, extra = item
            ms = int(at * 1000)
            if ms != last_ms:  # (records come several to a millisecond on a busy server)
                last_ms, now = ms, self._time(at)
                if ms // 60_000 != minute:
                    minute, buffers = ms // 60_000, {}
            # (`10 in payload` is 6x faster than `b"\n" in payload`: a memchr, no buffer.)
            if extra is not None or not payload or 10 in payload or 13 in payload:
                line = self._line(item)
            else:
                try:
                    loads(payload)
                except not_json:
                    line = self._line(item)
                else:
                    size = len(payload)
                    head = heads.get(collection) or self._head(collection)
                    line = RECORD % (
                        prefix, number, head, JSON_KIND, now, prefix, number, dumps(rid),
                        size - 1, size, payload, b"",
                    )  # fmt: skip
            used += len(line)
            if used > limit:
                if at >= self._evictable_at:  # a closed partition can go (ring buffer)
                    used -= self._evict(used - limit, at)
                if used > limit:
                    used -= len(line)
                    self._drop("quota")
                    continue
            buffer = buffers.get(collection)
            if buffer is None:
                buffer = buffers[collection] = batches.setdefault((collection, minute), bytearray())
            buffer += line
        self._used = used
        return batches

    def _line(self, item: Item) -> bytes:
        """One record as Azure writes it, as a JSON line, whatever its payload and extras:
        the fixed parts are JSON made once (per collector or collection), the
        payload is written as it came when it is JSON on one line, and the rest goes in
        with one bytes `%` (what orjson.dumps of the record's dict would write, byte for
        byte: test_collector.py, at ~2/3 of its cost)."""
        collection, number, request_id, at, payload, extra = item
        kind, tail = JSON_KIND, b""
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
        head = self._heads.get(collection) or self._head(collection)
        prefix, size = self._prefix, len(payload)
        return RECORD % (
            prefix,
            number,
            head,
            kind,
            self._time(at),
            prefix,
            number,
            orjson.dumps(request_id),
            max(size - 1, 0),
            size,
            data,
            tail,
        )

    def _head(self, collection: str) -> bytes:
        """What a collection's records share: the end of `id`, `source`, `type` and the
        name of `datacontenttype`."""
        head = b'-%s","source":%s,"type":%s,"datacontenttype":' % (
            collection.encode(),
            self._source,
            orjson.dumps(f"azureml.inference.{collection}"),
        )
        self._heads[collection] = head
        return head

    def _time(self, at: float) -> bytes:
        """`at` as Azure writes it: ISO 8601 in UTC, to the millisecond (formatted once per
        millisecond: a busy deployment's records come several to a millisecond)."""
        ms = int(at * 1000)
        if ms == self._milli[0]:
            return self._milli[1]
        second, millis = divmod(ms, 1000)
        if second != self._second[0]:
            text = datetime.fromtimestamp(second, UTC).isoformat().removesuffix("+00:00")
            self._second = (second, text)
        formatted = f"{self._second[1]}.{millis:03d}+00:00".encode()
        self._milli = (ms, formatted)
        return formatted

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

    def _rescan(self) -> None:
        """The bytes the deployment's instances have written so far (the quota is theirs),
        and the partitions that hold them (what `_evict` may delete), in one walk of the
        folder (links are not followed)."""
        root = self.settings.folder
        used = 0
        partitions: list[tuple[float, float, Path, int]] = []
        for top, folders, names in os.walk(root):
            here = Path(top)
            if here == root:
                folders[:] = [name for name in folders if name != STATS_FOLDER]
            size = 0
            for name in names:
                if name.endswith(DATA_SUFFIXES):
                    with contextlib.suppress(OSError):
                        size += (here / name).lstat().st_size
            if size:
                used += size
                span = _span(here.relative_to(root).parts)
                if span is not None:
                    partitions.append((*span, here, size))
        partitions.sort(reverse=True)  # the oldest last: `_evict` pops it first
        self._partitions = partitions
        self._evictable_at = min((p[1] for p in partitions), default=math.inf) + CLOSED_GRACE_S
        self._used = used
        self._scanned_at = time.monotonic()

    def _evict(self, need: int, now: float) -> int:
        """Delete the oldest closed partitions of the folder (of every collection and every
        instance) until `need` bytes are freed or none is left; the bytes freed.

        Only when a record would go over the quota, from the list the last `_rescan`
        made: never a scan per record. A partition is closed when its period ended
        CLOSED_GRACE_S before `now`; one holding this writer's current file or a file its
        Parquet writer converts is kept whatever its time. Another instance may have
        deleted a partition first: its bytes are gone all the same, but not counted here."""
        busy = {path.parent for path in self._current.values()}
        for proc in self._converting:  # (`python -m sluice.inference.parquet FILE...`)
            if isinstance(proc.args, list):
                busy.update(Path(arg).parent for arg in proc.args[3:])
        cutoff = now - CLOSED_GRACE_S
        partitions, freed = self._partitions, 0
        kept: list[tuple[float, float, Path, int]] = []
        while freed < need and partitions:
            start, end, top, size = partitions.pop()
            if end > cutoff or top in busy:
                kept.append((start, end, top, size))
                continue
            files, removed, left = _delete_partition(top, self.settings.folder)
            if files:
                self.evicted.update(partitions=1, files=files, bytes=removed)
                self.evicted_before = max(self.evicted_before, end)
                log.info("collector_evicted", partition=str(top), files=files, bytes=removed)
            # What the scan counted, less what could not be deleted (this writer's own
            # lines since the scan are in `removed`).
            freed += max(size - left, removed, 0)
        partitions.extend(reversed(kept))
        ends = [p[1] for p in partitions if p[2] not in busy]
        # When too little could go, the next try waits a second (records keep coming).
        self._evictable_at = max(
            min(ends, default=math.inf) + CLOSED_GRACE_S, now + 1.0 if freed < need else now
        )
        return freed

    def _stats_behind(self) -> bool:
        """Whether the counts differ from what the stats file shows."""
        return (self.written, self.dropped, self.evicted) != self._shown

    def _write_stats(self) -> None:
        self._stats_at = time.monotonic()
        self._shown = (self.written, Counter(self.dropped), Counter(self.evicted))
        folder = self.settings.folder / STATS_FOLDER
        stats: dict[str, Any] = {
            "instance": self.settings.instance,
            "written": self.written,
            "dropped": dict(self.dropped),
            "evicted": dict(self.evicted),
        }
        if self.evicted_before:
            stats["evicted_before"] = datetime.fromtimestamp(self.evicted_before, UTC).isoformat()
        try:
            folder.mkdir(exist_ok=True)
            partial = folder / f".{self.settings.instance}.json.partial"
            partial.write_bytes(orjson.dumps(stats))
            partial.replace(folder / f"{self.settings.instance}.json")
        except OSError as exc:
            log.warning("collector_stats_failed", error=str(exc))


DATA_SUFFIXES = (".jsonl", ".parquet")
SPANS = (86_400, 3_600, 60)  # a partition of yyyy/MM/dd, .../HH, .../HH/mm


def _span(parts: tuple[str, ...]) -> tuple[float, float] | None:
    """The period (start, end; unix time) of a partition's folder, `<collection>/yyyy/MM/dd`
    and maybe `/HH` and `/mm`, whatever the rolling rate that made it; None for another."""
    numbers = parts[1:]
    if not 3 <= len(numbers) <= 5 or not all(p.isascii() and p.isdigit() for p in numbers):
        return None
    year, month, day, hour, minute = (*map(int, numbers), 0, 0)[:5]
    try:
        start = datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()
    except (ValueError, OverflowError):
        return None
    return start, start + SPANS[len(numbers) - 3]


def _delete_partition(top: Path, root: Path) -> tuple[int, int, int]:
    """Delete a partition's record files (every instance's `.jsonl` and `.parquet`; not a
    Parquet writer's `.partial`), then its folder and those above it up to the collection
    when that leaves them empty; (files, bytes) deleted, and the bytes of those that could
    not be (gone already, another instance deleted them: not counted)."""
    files = removed = left = 0
    try:
        paths = [path for path in top.iterdir() if path.name.endswith(DATA_SUFFIXES)]
    except OSError:  # gone already
        return 0, 0, 0
    for path in paths:
        try:
            size = path.lstat().st_size
            path.unlink()  # (a link is deleted, never what it points to)
        except FileNotFoundError:
            continue
        except OSError as exc:  # not ours to delete, a folder named *.jsonl...
            with contextlib.suppress(OSError):
                left += path.lstat().st_size
            log.warning("collector_evict_failed", path=str(path), error=str(exc))
            continue
        files += 1
        removed += size
    folder = top
    while folder.parent != root and folder != root:  # stop at <collection>/
        try:
            folder.rmdir()
        except OSError:  # not empty (another instance's file, a .partial): it stays
            break
        folder = folder.parent
    return files, removed, left


def _json(payload: bytes) -> bytes:
    """A JSON payload as the record's `data`: checked by one parse and kept as it came,
    unless it spans lines (a JSON-lines record is one line): then parsed and written again.
    orjson.JSONDecodeError when it is not JSON."""
    parsed = orjson.loads(payload)
    if 10 in payload or 13 in payload:  # b"\n", b"\r"
        return orjson.dumps(parsed)
    return payload


def main() -> None:
    """`python -m sluice.inference.collector <settings as JSON>`: the writer process.

    Frames from stdin until it ends, each written at once; drops reported on stdout.
    Its stdin ends when the server closed it or died (`frames`)."""
    from sluice.common.log import configure_logging

    configure_logging(level="info", fmt="json")
    raw = json.loads(sys.argv[1])  # CollectorFeed's settings
    raw.update(folder=Path(raw["folder"]), collections=frozenset(raw["collections"]))
    settings = CollectorSettings(**raw)
    out = sys.stdout.buffer

    def report(reason: str, count: int) -> None:
        with contextlib.suppress(OSError):  # the server is gone: nobody to tell
            out.write(f"{reason} {count}\n".encode())
            out.flush()

    writer = DataCollector(settings, report)
    writer.open()
    for batch in frames(sys.stdin.buffer):
        writer.extend(batch)
        try:
            writer.flush()
        except Exception:  # one bad batch must not end the writer
            log.exception("collector_flush_failed")
    writer.close()


if __name__ == "__main__":
    main()
