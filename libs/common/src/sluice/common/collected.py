"""Where a deployment's data collector writes, and reading it back.

The layout is Azure's default data asset path for collected data,
`azureml://datastores/workspaceblobstore/paths/modelDataCollector/<endpoint>/<deployment>/<collection>`,
under the platform's datastore folder (`<state>/datastore/<datastore>/<path>`, as the
batch service resolves `azureml://datastores/...` URIs), so a batch job can read it back:

    <state>/datastore/workspaceblobstore/modelDataCollector/<endpoint>/<deployment>/
        <collection>/<yyyy>/<MM>/<dd>/<HH>/<instance>.jsonl
        _stats/<instance>.json          # {"written": n, "dropped": {reason: n}}

The inference server writes (sluice.inference.collector); the provisioner creates the
folder for the deployment's user and reads it back for `online-deployment collected`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluice.common.resources import OnlineDeploymentSpec

DATASTORE = "datastore"
DEFAULT_DATASTORE = "workspaceblobstore"
COLLECTOR_PATH = "modelDataCollector"
STATS = "_stats"


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


def read_collected(
    folder: Path,
    *,
    collection: str = "",
    since_s: float = 0,
    limit: int = 100,
    now: float | None = None,
) -> CollectedView:
    """The files (modified within `since_s`, 0 = all) and their newest `limit` records."""
    view = CollectedView()
    if not folder.is_dir():
        return view
    cutoff = (now or time.time()) - since_s if since_s else 0.0
    kept: deque[tuple[str, str]] = deque(maxlen=max(limit, 0))
    files: list[tuple[float, CollectedFile]] = []
    for path in folder.glob("*/**/*.jsonl"):
        name = path.relative_to(folder).parts[0]
        if collection and name != collection:
            continue
        with contextlib.suppress(OSError):
            stat = path.stat()
            if stat.st_mtime >= cutoff:
                files.append((stat.st_mtime, CollectedFile(path, name, stat.st_size)))
    lines: list[tuple[str, str]] = []
    for _, file in sorted(files, key=lambda f: str(f[1].path)):
        view.files.append(file)
        with contextlib.suppress(OSError), file.path.open() as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    at = str(json.loads(line).get("time", ""))
                except json.JSONDecodeError:
                    continue  # a line being written right now
                if cutoff and _epoch(at) < cutoff:
                    continue
                lines.append((at, line))
    lines.sort(key=lambda item: item[0])
    view.total_records = len(lines)
    kept.extend(lines)
    view.records = [line for _, line in kept]
    view.dropped = dropped_counts(folder)
    return view


def dropped_counts(folder: Path) -> dict[str, int]:
    """Records the deployment's instances could not write, by reason, summed."""
    total: Counter[str] = Counter()
    for stats in (folder / STATS).glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            for reason, count in json.loads(stats.read_text()).get("dropped", {}).items():
                total[reason] += int(count)
    return dict(total)


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0
