"""`python -m sluice.inference.parquet FILE.jsonl...`: closed collection files as Parquet.

When the data collector rolls over to a new partition (the hour passed, or the
instance stopped), the file it closed is also written as `<instance>.parquet`
beside it, for the tools that read data sets as Parquet (pandas, Spark, DuckDB,
an MLTable). The JSON lines stay: they are Azure's format and what
`sluice online-deployment collected` reads.

It runs as a short-lived child of the inference server, so pyarrow (~50 MB)
never stays in the instance's memory and the request path never waits for it.
One column per record field; `time` is a UTC timestamp and `data` the payload
as JSON text (payloads differ in shape from request to request). The file is
written to `.partial` first and renamed, so a reader never sees half of one.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

# Azure's record fields first, in its order; other fields (custom logging's
# `modelversion`, payload events' `path`/`method`) follow, sorted.
FIELDS = (
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "time",
    "data",
    "dataencoding",
    "contentrange",
    "correlationid",
    "xrequestid",
    "agent",
)


def convert(source: Path) -> Path:
    """Write `source` (JSON lines) as Parquet beside it; returns the Parquet file."""
    import pyarrow as pa  # here: only this short-lived process pays for it
    import pyarrow.parquet as pq

    records = [orjson.loads(line) for line in source.read_bytes().splitlines() if line.strip()]
    extra = sorted({key for record in records for key in record} - set(FIELDS))
    columns: dict[str, Any] = {}
    for name in (*FIELDS, *extra):
        values = [record.get(name) for record in records]
        if name == "time":
            columns[name] = pa.array(
                [datetime.fromisoformat(v) if v else None for v in values],
                type=pa.timestamp("ms", tz="UTC"),
            )
        elif name == "data":
            columns[name] = pa.array(
                [None if v is None else orjson.dumps(v).decode() for v in values], pa.string()
            )
        else:
            columns[name] = pa.array(
                [
                    v if v is None or isinstance(v, str) else orjson.dumps(v).decode()
                    for v in values
                ],
                pa.string(),
            )
    target = source.with_suffix(".parquet")
    partial = target.with_name(f".{target.name}.partial")
    pq.write_table(pa.table(columns), partial)
    partial.replace(target)
    return target


def main(argv: list[str]) -> int:
    failed = 0
    for name in argv:
        try:
            convert(Path(name))
        except Exception as exc:  # one bad file must not stop the others
            print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
