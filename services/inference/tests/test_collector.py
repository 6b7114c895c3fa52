"""The data collector's files: Azure's layout and record shape, sampling, and drops that
never raise (quota, full queue, a folder that cannot be written)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sluice.common.collected import read_collected
from sluice.inference import collector as collector_module
from sluice.inference.collector import (
    CollectorFeed,
    CollectorSettings,
    DataCollector,
)
from sluice.testing.wait import wait_for


def make(folder: Path, **kwargs: object) -> DataCollector:
    settings = CollectorSettings(
        folder=folder,
        collections=frozenset({"model_inputs", "model_outputs"}),
        instance="abc123",
        source="/onlineEndpoints/e/deployments/d",
        **kwargs,  # type: ignore[arg-type]
    )
    return DataCollector(settings)


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_inputs_and_outputs_land_in_azures_partitions_with_one_correlation_id(
    tmp_path: Path,
) -> None:
    dc = make(tmp_path)
    cid = dc.sample()
    assert cid is not None
    dc.add("model_inputs", cid, "req-1", b'{"data": [[1, 2]]}')
    dc.add("model_outputs", cid, "req-1", b"[5.5]")
    dc.add("model_inputs", 2, "req-2", b"not json \xff")
    dc.flush()
    hour = time.strftime("%Y/%m/%d/%H", time.gmtime())
    inputs = lines(tmp_path / "model_inputs" / hour / "abc123.jsonl")
    outputs = lines(tmp_path / "model_outputs" / hour / "abc123.jsonl")
    assert inputs[0]["data"] == {"data": [[1, 2]]}
    assert inputs[0]["type"] == "azureml.inference.model_inputs"
    assert inputs[0]["source"] == "/onlineEndpoints/e/deployments/d"
    assert inputs[0]["correlationid"] == outputs[0]["correlationid"] == dc.correlation_id(cid)
    assert inputs[0]["xrequestid"] == "req-1" and outputs[0]["data"] == [5.5]
    assert inputs[1]["dataencoding"] == "base64"  # not text: kept byte for byte
    assert dc.written == 3 and not dc.dropped
    view = read_collected(tmp_path, limit=2)
    assert view.total_records == 3 and len(view.records) == 2 and len(view.files) == 2


def test_rolling_rate_minute_adds_the_minute(tmp_path: Path) -> None:
    dc = make(tmp_path, rolling_rate="minute")
    dc.add("model_inputs", 5, "r", b"1")
    dc.flush()
    (found,) = tmp_path.glob("model_inputs/*/*/*/*/*/abc123.jsonl")
    assert len(found.relative_to(tmp_path).parts) == 7


@pytest.mark.integration  # the rolled-over files are also written as Parquet (a process)
def test_one_flush_across_minutes_puts_each_record_in_its_minute_s_file(tmp_path: Path) -> None:
    """Records of one flush, interleaved by collection, whose times cross a minute: each
    lands in its (collection, minute) file in order, and the counts are the lines."""
    dc = make(tmp_path, rolling_rate="minute")
    minute = int(time.time()) // 60 * 60
    times = [minute - 2.5, minute - 1.0, minute + 0.5, minute + 61.0]  # 3 minutes
    for i, at in enumerate(times):
        for collection in ("model_inputs", "model_outputs"):
            dc.extend([(collection, i, f"r{i}", at, b"[%d]" % i, None)])
    dc.flush()
    for collection in ("model_inputs", "model_outputs"):
        found = {
            path.relative_to(tmp_path / collection).parent.as_posix(): [
                record["correlationid"] for record in lines(path)
            ]
            for path in (tmp_path / collection).rglob("abc123.jsonl")
        }
        partition = [time.strftime("%Y/%m/%d/%H/%M", time.gmtime(minute + d)) for d in (-60, 0, 60)]
        ids = [dc.correlation_id(i) for i in range(4)]
        assert found == {partition[0]: ids[:2], partition[1]: [ids[2]], partition[2]: [ids[3]]}
    assert dc.written == 8 and not dc.dropped


def test_sampling_rate_keeps_about_that_share(tmp_path: Path) -> None:
    dc = make(tmp_path, sampling_rate=0.1)
    kept = sum(dc.sample() is not None for _ in range(10_000))
    # Binomial(10000, 0.1): sd 30; +-6 sd never fails by chance.
    assert 820 <= kept <= 1180
    assert all(make(tmp_path, sampling_rate=0.0).sample() is None for _ in range(1000))


def test_a_full_quota_drops_and_counts(tmp_path: Path) -> None:
    dc = make(tmp_path, max_bytes=2000)
    for i in range(50):
        dc.add("model_inputs", i, "r", b'{"data": [[1, 2, 3]]}')
    dc.flush()
    assert dc.written > 0 and dc.dropped["quota"] == 50 - dc.written
    total = sum(p.stat().st_size for p in tmp_path.rglob("*.jsonl"))
    assert total <= 2000
    # The counts are on disk for `online-deployment collected`.
    assert read_collected(tmp_path).dropped == {"quota": 50 - dc.written}


@pytest.mark.parametrize("rolling_rate", ["minute", "hour", "day"])
def test_a_full_quota_evicts_the_oldest_closed_partitions_like_a_ring_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rolling_rate: str
) -> None:
    """A quota of 3.5 partitions' worth, 5 partitions written: the 2 oldest are deleted
    (every instance's .jsonl and .parquet in them, and their folders), the 3 newest are
    all there, no record is dropped, and what was deleted is counted for `collected`.
    Another instance's file in the partition being written stays."""
    monkeypatch.setattr(collector_module, "RESCAN_S", 0.0)  # every flush measures again
    converted: list[Path] = []  # (no Parquet child process here: its files are planted)
    monkeypatch.setattr(DataCollector, "_to_parquet", lambda self, paths: converted.extend(paths))
    step = {"minute": 60, "hour": 3600, "day": 86_400}[rolling_rate]
    base = int(time.time()) // step * step - 5 * step  # five periods ago
    payload = b'{"data": [[1, 2, 3]]}'
    dc = make(tmp_path, rolling_rate=rolling_rate)
    size = len(dc._line(("model_inputs", 0, "r", base + 1.0, payload, None)))
    dc = make(tmp_path, rolling_rate=rolling_rate, max_bytes=35 * size)
    folder = tmp_path / "model_inputs"

    def partition(n: int) -> Path:
        at = time.gmtime(base + n * step)
        return folder / time.strftime(collector_module.PARTITIONS[rolling_rate], at)

    def write(n: int) -> None:
        records = [
            ("model_inputs", 10 * n + i, "r", base + n * step + 1 + i / 10, payload, None)
            for i in range(10)
        ]
        dc.extend(records)
        dc.flush()

    dc.open()
    for n in range(3):
        write(n)
    # What the Parquet writer and another instance (of the same deployment) left there.
    (partition(0) / "abc123.parquet").write_bytes(b"P" * 100)
    (partition(0) / "other.jsonl").write_bytes(b"{}\n")
    assert dc.evicted == {} and dc.written == 30
    write(3)  # over the quota: the oldest partition goes, whatever instance wrote it
    assert not partition(0).exists() and partition(1).is_dir()
    partition(4).mkdir(parents=True)
    (partition(4) / "other.jsonl").write_bytes(b"{}\n")  # another instance writes it now
    write(4)
    assert not partition(1).exists()
    assert all(any(d.iterdir()) for d in folder.rglob("*") if d.is_dir())  # no empty folder
    for n in (2, 3, 4):  # the newest: all there
        assert len(lines(partition(n) / "abc123.jsonl")) == 10
    assert (partition(4) / "other.jsonl").exists()
    assert dc.written == 50 and not dc.dropped
    assert dc.evicted == {"partitions": 2, "files": 4, "bytes": 20 * size + 100 + 3}
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*.json*") if "_stats" not in p.parts)
    assert on_disk <= 35 * size
    dc.close()
    view = read_collected(tmp_path)
    assert view.total_records == 31 and not view.dropped
    assert view.evicted == dc.evicted
    before = datetime.fromtimestamp(base + 2 * step, UTC)  # the end of the newest evicted
    assert datetime.fromisoformat(view.evicted_before) == before
    # A writer of the same instance that takes over goes on from these counts.
    again = make(tmp_path)
    again.open()
    assert again.evicted == dc.evicted and again.evicted_before == before.timestamp()


def test_a_partition_that_is_not_closed_is_not_evicted_and_records_are_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition whose period ended less than CLOSED_GRACE_S ago (an instance may still
    write its last records there) is not evicted: records over the quota are dropped and
    counted, without even a look at the partitions; a minute later it goes."""
    monkeypatch.setattr(collector_module, "RESCAN_S", 0.0)
    monkeypatch.setattr(DataCollector, "_to_parquet", lambda self, paths: None)
    tries: list[float] = []
    evict = DataCollector._evict

    def spy(self: DataCollector, need: int, now: float) -> int:
        tries.append(now)
        return evict(self, need, now)

    monkeypatch.setattr(DataCollector, "_evict", spy)
    hour = int(time.time()) // 3600 * 3600
    payload = b"[1]"
    size = len(make(tmp_path)._line(("model_inputs", 0, "r", hour + 1.0, payload, None)))
    dc = make(tmp_path, max_bytes=10 * size)
    dc.open()

    def write(at: float, count: int) -> None:
        dc.extend([("model_inputs", i, "r", at, payload, None) for i in range(count)])
        dc.flush()

    write(hour - 3600 + 1.0, 5)  # the last hour
    write(hour + 30.0, 10)  # 30 s into this one: the last hour is not closed yet
    assert dc.dropped == {"quota": 5} and not dc.evicted and tries == []
    write(hour + 90.0, 5)  # 90 s in: it is
    assert dc.dropped == {"quota": 5} and dc.evicted["partitions"] == 1 and dc.written == 15
    assert tries == [hour + 90.0]


def test_a_full_queue_and_an_unwritable_folder_drop_without_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dc = make(tmp_path)
    monkeypatch.setattr(collector_module, "MAX_QUEUED", 3)
    for _ in range(5):
        dc.add("model_inputs", 5, "r", b"1")
    assert dc.dropped["queue_full"] == 2
    dc.flush()
    (tmp_path / "model_outputs").write_text("a file where a folder should be")
    dc.add("model_outputs", 5, "r", b"1")
    dc.flush()
    assert dc.dropped["write_error"] == 1 and dc.written == 3


@pytest.mark.integration  # the writer is a child process
def test_the_feed_ships_records_to_its_writer_which_reports_drops_back(tmp_path: Path) -> None:
    """The server's side (CollectorFeed) queues, its thread ships the queue to the writer
    process, the writer's quota drops come back to the server's callback, close() waits
    for everything sent to be written, and a writer that died is replaced."""
    drops: list[tuple[str, int]] = []
    settings = CollectorSettings(
        folder=tmp_path,
        collections=frozenset({"model_inputs", "model_outputs"}),
        instance="abc123",
        max_bytes=3000,
    )
    feed = CollectorFeed(settings, lambda reason, count: drops.append((reason, count)))
    feed.start()
    feed.add("model_inputs", 5, "r", b'{"data": [[1, 2]]}')
    wait_for(lambda: read_collected(tmp_path).total_records == 1, "the record written", deadline=10)
    first = feed.writer.process
    assert first is not None
    first.kill()  # the writer dies: the next batch starts another
    first.wait()
    for i in range(30):
        feed.add("model_outputs", i, "r", b"[5.5]")
    feed.close()
    view = read_collected(tmp_path)
    quota = sum(count for reason, count in drops if reason == "quota")
    assert quota > 0 and view.total_records == 31 - quota
    assert view.dropped == {"quota": quota}  # the new writer's own stats file
    second = feed.writer.process
    assert second is not first and second is not None
    assert second.poll() == 0  # it ended with its input


def test_the_stats_file_is_written_at_most_once_a_second_and_catches_up_when_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Busy flushes leave the stats file behind (it costs a rename each time); a drop is
    written at once, and a flush with nothing queued (the feed's sign that records stopped
    coming) brings it up to date."""
    monkeypatch.setattr(collector_module, "STATS_S", 3600.0)
    dc = make(tmp_path)
    stats = tmp_path / "_stats" / "abc123.json"
    dc.add("model_inputs", 1, "r", b"[1]")
    dc.flush()
    assert json.loads(stats.read_text())["written"] == 1  # the first flush writes it
    dc.add("model_inputs", 2, "r", b"[2]")
    dc.flush()
    assert json.loads(stats.read_text())["written"] == 1  # within STATS_S: not again
    dc.settings = CollectorSettings(**{**dc.settings.__dict__, "max_bytes": 1})
    dc.add("model_inputs", 3, "r", b"[3]")
    dc.flush()
    shown = json.loads(stats.read_text())
    assert shown["dropped"] == {"quota": 1} and shown["written"] == 2  # a drop: at once
    dc.settings = CollectorSettings(**{**dc.settings.__dict__, "max_bytes": 10**9})
    dc.add("model_inputs", 4, "r", b"[4]")
    dc.flush()
    assert json.loads(stats.read_text())["written"] == 2
    dc.flush()  # nothing queued: the feed went idle
    assert json.loads(stats.read_text())["written"] == 3
    assert read_collected(tmp_path).total_records == 3


@pytest.mark.integration  # the writer is a child process
def test_the_writer_s_stats_catch_up_when_the_feed_goes_idle(tmp_path: Path) -> None:
    """Records shipped within a second of the last stats write are counted in the stats
    file once the feed finds nothing more to ship (it sends the writer an empty frame),
    with the server still running."""
    settings = CollectorSettings(
        folder=tmp_path, collections=frozenset({"model_inputs"}), instance="abc123"
    )
    feed = CollectorFeed(settings)
    feed.start()
    try:
        stats = tmp_path / "_stats" / "abc123.json"

        def written() -> int:
            try:
                return int(json.loads(stats.read_text())["written"])
            except (OSError, ValueError):
                return -1

        feed.add("model_inputs", 1, "r", b"[1]")
        wait_for(lambda: written() == 1, "the first flush's stats", deadline=10)
        for i in range(2, 6):
            feed.add("model_inputs", i, "r", b"[1]")
        wait_for(lambda: written() == 5, "the stats after the feed went idle", deadline=10)
    finally:
        feed.close()


@pytest.mark.integration  # the Parquet writer is a child process
def test_a_rolled_over_file_is_also_written_as_parquet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    dc = make(tmp_path, rolling_rate="minute")
    now = [1_764_000_000.0]  # 2025-11-24 16:00:00 UTC
    monkeypatch.setattr(collector_module.time, "time", lambda: now[0])
    dc.add("model_inputs", 1, "r1", b'{"data": [[1, 2]]}')
    dc.add("model_inputs", 2, "r2", b"plain text")
    dc.flush()
    (first,) = tmp_path.glob("model_inputs/**/abc123.jsonl")
    assert not first.with_suffix(".parquet").exists()  # still open: its minute has not passed
    now[0] += 60
    dc.add("model_inputs", 3, "r3", b"[3]")
    dc.flush()
    parquet = first.with_suffix(".parquet")
    wait_for(parquet.exists, "the closed minute's file as Parquet", deadline=20)
    table = pq.read_table(parquet).to_pylist()
    assert [row["correlationid"] for row in table] == [dc.correlation_id(1), dc.correlation_id(2)]
    assert json.loads(table[0]["data"]) == {"data": [[1, 2]]}
    assert table[1]["data"] == '"plain text"' and table[1]["datacontenttype"] == "text/plain"
    assert table[0]["time"].timestamp() == 1_764_000_000.0
    # Stopping closes the current file too.
    dc.close()
    (second,) = (p for p in tmp_path.glob("model_inputs/**/abc123.jsonl") if p != first)
    assert [
        r["correlationid"] for r in pq.read_table(second.with_suffix(".parquet")).to_pylist()
    ] == [dc.correlation_id(3)]


def test_records_keep_their_shape_whatever_the_payload(tmp_path: Path) -> None:
    """One line per record, whatever the payload: JSON kept as sent (spaces and all),
    JSON over several lines written again on one, text and bytes as before; the time to
    the millisecond as datetime writes it; correlation ids are distinct version-4 UUIDs."""
    dc = make(tmp_path)
    ids = {dc.sample() for _ in range(10_000)}
    assert len(ids) == 10_000
    for cid in list(ids)[:100]:
        assert cid is not None
        text = dc.correlation_id(cid)
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text
    # Another server (its own settings) draws another prefix: its ids differ from these.
    assert make(tmp_path).correlation_id(0) != dc.correlation_id(0)
    at = 1_764_201_602.6569
    payloads = [
        b'{"data": [[1, 2.5, -3]],  "x": "a\\nb"}',  # an escaped newline is one line
        b'{\n  "data": [[1, 2]]\n}\r\n',  # pretty-printed: written again on one line
        b"  [1, 2]  ",
        b"plain text",
        b"\xff\xfe",
    ]
    for i, payload in enumerate(payloads):
        dc._queue.append(("model_inputs", 7, f"r{i}", at, payload, None))
    dc.flush()
    (path,) = tmp_path.glob("model_inputs/*/*/*/*/abc123.jsonl")
    raw = path.read_bytes().splitlines()
    assert len(raw) == len(payloads)
    records = [json.loads(line) for line in raw]
    assert records[0]["data"] == {"data": [[1, 2.5, -3]], "x": "a\nb"}
    assert b'"data":{"data": [[1, 2.5, -3]],  "x": "a\\nb"}' in raw[0]  # as sent
    assert records[1]["data"] == {"data": [[1, 2]]}
    assert records[2]["data"] == [1, 2]
    assert records[3]["data"] == "plain text" and records[3]["datacontenttype"] == "text/plain"
    assert records[4]["dataencoding"] == "base64"
    expected = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    assert {r["time"] for r in records} == {expected} == {"2025-11-27T00:00:02.656+00:00"}


def test_a_record_line_is_the_json_of_azures_fields_in_their_order(tmp_path: Path) -> None:
    """The line is put together from pre-made parts (collector.RECORD): it must be exactly
    the compact JSON of Azure's record, whatever the ids, source, payload and extras hold."""
    import base64

    import orjson

    collections = frozenset({"model_inputs", "request", "response"})
    dc = DataCollector(
        CollectorSettings(
            folder=tmp_path, collections=collections, instance="i", source='/e"p\\/d\u00e9'
        )
    )
    at = 1_764_201_602.6569
    payloads = [b'{"a": [1, 2]}', b"[1.5]", b'{\n"a": 1\n}', b'caf\xc3\xa9 "q"', b"\xff\x00", b""]
    extras = [None, {"status": 503}, {"method": "POST", "path": '/score?x="1"'}]
    for payload in payloads:
        for extra in extras:
            collection = "model_inputs" if extra is None else "response"
            rid = 'r"\u00e9\\1'
            item = (collection, 0xC0FFEE, rid, at, payload, extra)
            expected: dict[str, object] = {
                "specversion": "1.0",
                "id": f"{dc.correlation_id(0xC0FFEE)}-{collection}",
                "source": '/e"p\\/d\u00e9',
                "type": f"azureml.inference.{collection}",
                "datacontenttype": "application/json",
                "time": "2025-11-27T00:00:02.656+00:00",
                "correlationid": dc.correlation_id(0xC0FFEE),
                "xrequestid": rid,
                "contentrange": f"bytes 0-{max(len(payload) - 1, 0)}/{len(payload)}",
                "agent": "sluice-inference",
            }
            try:
                parsed = json.loads(payload) if payload else None
                as_sent = payload and b"\n" not in payload
                expected["data"] = orjson.Fragment(payload) if as_sent else parsed
            except ValueError:
                try:
                    expected["data"] = payload.decode()
                    expected["datacontenttype"] = "text/plain"
                except UnicodeDecodeError:
                    expected["data"] = base64.b64encode(payload).decode()
                    expected["datacontenttype"] = "application/octet-stream"
                    expected["dataencoding"] = "base64"
            expected.update(extra or {})
            assert dc._line(item) == orjson.dumps(expected) + b"\n", (payload, extra)
            # The usual record's own path (`_format`) makes the same line, and so do the
            # others' (it hands them to `_line`).
            (formatted,) = dc._format([item]).values()
            assert bytes(formatted) == orjson.dumps(expected) + b"\n", (payload, extra)
