"""Collecting artifacts that nothing refers to any more.

Artifacts are content-addressed folders (`<state>/artifacts/sha256/<hex>`) that the
registry stores at upload; deployments, assets and batch jobs refer to them by
digest. When those documents are deleted or updated, the folders stay. Every
`interval_s` (and at start) the registry reads every digest the referring
collections mention (any string of the form `sha256:<64 hex>`, wherever it is in a
document, so a new field that holds a reference is covered without changes here)
and removes the folders that are neither referred to nor younger than `grace_s`:
an upload is referred to by the create call that follows it, and a re-upload of the
same bytes refreshes the folder's time (`ArtifactStore.ingest`), so an upload made
for a call in flight is never collected under it.

The provisioner's and the batch service's private copies (workspaces) are theirs:
they remove them with the deployment, or the job.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Iterable
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.artifacts import ArtifactStore
from sluice.common.assets import ASSETS
from sluice.common.log import get_logger
from sluice.common.mongo import Document
from sluice.common.resources import BATCH_DEPLOYMENTS, BATCH_JOBS, ONLINE_DEPLOYMENTS

log = get_logger(__name__)
REFERRING = (ONLINE_DEPLOYMENTS, BATCH_DEPLOYMENTS, ASSETS, BATCH_JOBS)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
GRACE_S = 86400.0
INTERVAL_S = 3600.0


def digests_in(value: Any) -> Iterable[str]:
    """Every artifact digest anywhere in a document."""
    if isinstance(value, str):
        if DIGEST.match(value):
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from digests_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from digests_in(item)


async def referenced(db: AsyncDatabase[Document]) -> set[str]:
    found: set[str] = set()
    for collection in REFERRING:
        async for doc in db[collection].find({}):
            found.update(digests_in(doc))
    return found


def collect(store: ArtifactStore, keep: set[str], *, grace_s: float, now: float) -> list[str]:
    """Remove the stored artifacts not in `keep` and older than `grace_s`; their digests."""
    folder = store.root / "sha256"
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        digest = f"sha256:{entry.name}"
        if digest in keep or not DIGEST.match(digest):
            continue
        if now - entry.stat().st_mtime < grace_s:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(digest)
    return removed


async def run(
    db: AsyncDatabase[Document],
    store: ArtifactStore,
    *,
    interval_s: float = INTERVAL_S,
    grace_s: float = GRACE_S,
) -> None:
    """Collect now and every `interval_s`, until cancelled; a failed round is retried."""
    while True:
        try:
            keep = await referenced(db)
            removed = await asyncio.to_thread(
                collect, store, keep, grace_s=grace_s, now=time.time()
            )
            if removed:
                log.info("artifacts_collected", removed=len(removed), digests=removed)
        except Exception as exc:
            log.warning("artifact_collection_failed", error=str(exc))
        await asyncio.sleep(interval_s)
