"""Where a deployment's data collector writes, and reading it back.

The layout is Azure's default data asset path for collected data,
`azureml://datastores/workspaceblobstore/paths/modelDataCollector/<endpoint>/<deployment>/<collection>`,
under the platform's datastore folder (`<state>/datastore/<datastore>/<path>`, as the
batch service resolves `azureml://datastores/...` URIs), so a batch job can read it back:

    <state>/datastore/workspaceblobstore/modelDataCollector/<endpoint>/<deployment>/
        <collection>/<yyyy>/<MM>/<dd>/<HH>/<instance>.jsonl
        _stats/<instance>.json          # {"written": n, "dropped": {reason: n},
                                        #  "evicted": {"partitions": n, "files": n, "bytes": n},
                                        #  "evicted_before": "<ISO time>"}

`evicted` is what the quota made the writer delete (the oldest closed partitions, a
ring buffer), and `evicted_before` the end of the newest partition it deleted.

The inference server writes (sluice.inference.collector); the provisioner creates the
folder for the deployment's user and reads it back for `online-deployment collected`.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sluice.common.untrusted import open_plain, plain_files

if TYPE_CHECKING:
    from sluice.common.resources import OnlineDeploymentSpec

DATASTORE = "datastore"
DEFAULT_DATASTORE = "workspaceblobstore"
COLLECTOR_PATH = "modelDataCollector"
STATS = "_stats"
# Longer than any record the inference server writes (its 100 MiB body limit, as base64).
MAX_LINE_BYTES = 160 * 1024 * 1024


def collector_root(state_dir: Path) -> Path:
    return state_dir / DATASTORE / DEFAULT_DATASTORE / COLLECTOR_PATH


def collector_argv(spec: OnlineDeploymentSpec, folder: str, platform_quota: int) -> list[str]:
    """The inference server's data collection flags (none when nothing is collected).

    Both backends use it. The platform's byte quota per deployment
    (`SLUICE_DATA_COLLECTOR_MAX_BYTES`) may be lowered, never raised, by the deployment's
    `DATA_COLLECTOR_MAX_BYTES` variable.
    """
    dc = spec.data_collector
    if not dc.enabled:
        return []
    quota = platform_quota
    own = spec.environment_variables.get("DATA_COLLECTOR_MAX_BYTES", "")
    if own.isdigit() and int(own) > 0:
        quota = min(quota, int(own))
    return [
        "--collect-dir", folder,
        "--collect", ",".join(dc.enabled),
        "--collect-sampling-rate", repr(dc.sampling_rate),
        "--collect-rolling-rate", dc.rolling_rate,
        "--collect-max-bytes", str(quota),
    ]  # fmt: skip


def collected_dir(state_dir: Path, endpoint: str, deployment: str) -> Path:
    return collector_root(state_dir) / endpoint / deployment


@dataclass
class CollectedFile:
    path: Path
    collection: str
    size_bytes: int


@dataclass
class CollectedView:
    files: list[CollectedFile] = field(default_factory=list)
    records: list[str] = field(default_factory=list)  # the newest `limit`, oldest first
    total_records: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    # What the quota deleted (partitions, files, bytes), over all instances, and the end of
    # the newest partition deleted (ISO time; "": none): the records before it are gone.
    evicted: dict[str, int] = field(default_factory=dict)
    evicted_before: str = ""


def read_collected(
    folder: Path,
    *,
    collection: str = "",
    since_s: float = 0,
    limit: int = 100,
    now: float | None = None,
) -> CollectedView:
    """The files (modified within `since_s`, 0 = all) and their newest `limit` records.

    The folder is the deployment's own, written by its code: read as root, nothing in it
    is trusted. Only plain files are read, each opened without following a link (a link
    to /dev/zero, a FIFO), folders are walked without following links, a line is read up
    to MAX_LINE_BYTES, and only the newest `limit` records are held."""
    view = CollectedView()
    if not folder.is_dir():
        return view
    cutoff = (now or time.time()) - since_s if since_s else 0.0
    files: list[CollectedFile] = []
    for path, seen in plain_files(folder, ".jsonl"):
        parts = path.relative_to(folder).parts
        if len(parts) < 2 or (collection and parts[0] != collection):
            continue
        if seen.st_mtime >= cutoff:
            files.append(CollectedFile(path, parts[0], seen.st_size))
    newest: list[tuple[str, int, str]] = []  # a heap of (time, order, line), `limit` at most
    for file in sorted(files, key=lambda f: str(f.path)):
        view.files.append(file)
        with contextlib.suppress(OSError), open_plain(file.path) as handle:
            while line := handle.readline(MAX_LINE_BYTES):
                text = line.strip().decode(errors="replace")
                if not text:
                    continue
                try:
                    at = str(json.loads(text).get("time", ""))
                except (json.JSONDecodeError, AttributeError):
                    continue  # a line being written right now (or no record)
                if cutoff and _epoch(at) < cutoff:
                    continue
                view.total_records += 1
                entry = (at, view.total_records, text)
                if len(newest) < limit:
                    heapq.heappush(newest, entry)
                elif limit > 0 and entry > newest[0]:
                    heapq.heapreplace(newest, entry)
    view.records = [text for _, _, text in sorted(newest)]
    view.dropped, view.evicted, view.evicted_before = stats_counts(folder)
    return view


def stats_counts(folder: Path) -> tuple[dict[str, int], dict[str, int], str]:
    """What the deployment's instances' stats files say, summed: the records they could
    not write by reason, what the quota made them delete (partitions, files, bytes), and
    the end of the newest partition deleted (the latest of theirs; "" when none)."""
    dropped: Counter[str] = Counter()
    evicted: Counter[str] = Counter()
    before = ""
    for stats, _ in plain_files(folder / STATS, ".json"):
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            with open_plain(stats) as f:
                shown = json.loads(f.read(MAX_LINE_BYTES))
            for reason, count in shown.get("dropped", {}).items():
                dropped[str(reason)] += int(count)
            for what, count in shown.get("evicted", {}).items():
                evicted[str(what)] += int(count)
            at = shown.get("evicted_before")
            if isinstance(at, str) and _epoch(at) and (not before or _epoch(at) > _epoch(before)):
                before = at
    return dict(dropped), dict(evicted), before


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0
