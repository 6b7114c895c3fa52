"""A batch job's state changes commit with their events (real MongoDB: transactions)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import parse_qsl

from faststream.nats import NatsBroker
from google.protobuf import json_format
from pymongo.asynchronous.database import AsyncDatabase

from sluice.batch.api import BatchApi
from sluice.batch.jobs import Job, JobState, JobStore, Progress
from sluice.batch.service import BatchService
from sluice.common.events import EventPublisher, Outbox
from sluice.common.events.outbox import OUTBOX
from sluice.common.mongo import Document
from sluice.common.resources import BatchSettings
from sluice.v1 import batch_pb2, common_pb2


def store_of(db: AsyncDatabase[Document], broker: NatsBroker) -> JobStore:
    """No relay runs: the events stay in the outbox, where the test reads them."""
    publisher = EventPublisher(broker, source="sluice/batch", subject_prefix="t", stream="T")
    return JobStore(db, Outbox(db, publisher))


async def outbox_events(db: AsyncDatabase[Document]) -> list[tuple[str, str, str]]:
    """(type, subject, data.state) of every stored event, in write order."""
    found = []
    async for raw in db[OUTBOX].find().sort("seq", 1):
        body = json.loads(raw["body"])
        found.append((body["type"], body["subject"], body["data"]["state"]))
    return found


def a_job(name: str = "job-1") -> Job:
    return Job(
        name=name,
        endpoint_name="ep",
        deployment_name="d",
        deployment_version=1,
        input="/data",
        files=("/data/a.csv",),
        output_path="/out",
        settings=BatchSettings(),
    )


async def test_every_state_change_commits_with_its_event_and_a_refused_one_with_none(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker
) -> None:
    store = store_of(mongo_db, nats_broker)
    await store.insert(a_job())
    running = await store.transition("job-1", JobState.running, when={JobState.queued})
    assert running is not None and running.state is JobState.running
    # Not Queued any more: refused, nothing written, no event.
    assert await store.transition("job-1", JobState.canceled, when={JobState.queued}) is None
    done = await store.transition(
        "job-1",
        JobState.completed,
        when={JobState.running},
        progress=Progress(mini_batches_total=1, mini_batches_done=1),
    )
    assert done is not None and done.progress.mini_batches_done == 1
    assert await outbox_events(mongo_db) == [
        ("sluice.batch.job.queued", "job-1", "Queued"),
        ("sluice.batch.job.running", "job-1", "Running"),
        ("sluice.batch.job.completed", "job-1", "Completed"),
    ]
    stored = await store.get("job-1")
    assert stored is not None and stored.state is JobState.completed


async def test_a_transition_racing_progress_updates_still_commits_once(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker
) -> None:
    store = store_of(mongo_db, nats_broker)
    await store.insert(a_job())
    await store.transition("job-1", JobState.running, when={JobState.queued})

    async def progress() -> None:
        for n in range(30):
            await store.update("job-1", progress=Progress(mini_batches_done=n))

    updates = asyncio.ensure_future(progress())
    ended = await store.transition("job-1", JobState.canceled, when={JobState.running})
    await updates
    assert ended is not None
    events = await outbox_events(mongo_db)
    assert [e for e in events if e[0] == "sluice.batch.job.canceled"] == [
        ("sluice.batch.job.canceled", "job-1", "Canceled")
    ]


def _request_of(link: str) -> batch_pb2.ListJobsRequest:
    """What the REST transcoder makes of a nextLink: each query parameter (a JSON field path)
    set on the request."""
    path, _, query = link.partition("?")
    assert path == "/jobs", link
    fields: dict[str, Any] = {}
    for key, value in parse_qsl(query, strict_parsing=True):
        *parents, leaf = key.split(".")
        node = fields
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return json_format.ParseDict(fields, batch_pb2.ListJobsRequest())


async def test_rest_job_list_next_link_keeps_the_filters_and_the_page_size(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker
) -> None:
    """GET /jobs?endpointName=e1&page.pageSize=2 followed by its nextLink lists e1's jobs only,
    2 a page (audit-rest finding 8: page 2 listed every endpoint's jobs, 100 a page)."""
    store = store_of(mongo_db, nats_broker)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for n, endpoint in enumerate(["e1", "e2", "e1", "e2", "e1", "e2", "e1"]):
        job = a_job(f"job-{n}").model_copy(
            update={"endpoint_name": endpoint, "created_at": start + timedelta(seconds=n)}
        )
        await store.insert(job)
    api = BatchApi(cast(BatchService, SimpleNamespace(store=store)))

    first = await api.ListJobResources(
        batch_pb2.ListJobsRequest(endpoint_name="e1", page=common_pb2.PageRequest(page_size=2)),
        None,
    )
    assert [j.name for j in first.value] == ["job-6", "job-4"]
    second = await api.ListJobResources(_request_of(first.next_link), None)
    assert [j.name for j in second.value] == ["job-2", "job-0"]
    assert second.next_link == ""
    assert {j.properties.details.endpoint_name for j in second.value} == {"e1"}


async def test_a_deployment_is_settled_once_and_only_as_the_version_that_was_built(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker
) -> None:
    """Claimed, then settled with its event; never twice, never an updated version, and
    never a namesake deleted and created again meanwhile (version 1 too: `created_at`)."""
    from sluice.batch.jobs import DeploymentVersion
    from sluice.common.resources import (
        BATCH_DEPLOYMENTS,
        ENVIRONMENT_BUILDING,
        BatchDeploymentDoc,
        BatchDeploymentSpec,
        Meta,
        to_document,
    )

    store = store_of(mongo_db, nats_broker)
    deployments = mongo_db[BATCH_DEPLOYMENTS]

    async def created(at: datetime) -> DeploymentVersion:
        doc = BatchDeploymentDoc(
            spec=BatchDeploymentSpec(name="d", endpoint_name="ep"), meta=Meta(created_at=at)
        )
        await deployments.replace_one({"_id": "ep/d"}, to_document(doc, "ep/d"), upsert=True)
        raw = await deployments.find_one({"_id": "ep/d"})
        assert raw is not None
        return DeploymentVersion.of(raw)

    async def meta() -> tuple[str, str]:
        raw = await deployments.find_one({"_id": "ep/d"})
        assert raw is not None
        return raw["meta"]["provisioning_state"], raw["meta"]["status_message"]

    first = await created(datetime(2026, 11, 29, 13, 0, tzinfo=UTC))
    await store.claim_deployment(first)
    assert await meta() == ("Creating", ENVIRONMENT_BUILDING)
    # Deleted and created again while the first one's environment built: same name, v1.
    again = await created(datetime(2026, 11, 29, 13, 1, tzinfo=UTC))
    assert again.version == first.version == 1
    assert not await store.settle_deployment(first, failure="the first one's build failed")
    assert await meta() == ("Creating", "")
    assert await store.settle_deployment(again, warnings=("python 3.8 asked, 3.11 used",))
    assert await meta() == ("Succeeded", "warning: python 3.8 asked, 3.11 used")
    assert not await store.settle_deployment(again, failure="settled already")
    events = [json.loads(raw["body"]) async for raw in mongo_db[OUTBOX].find().sort("seq", 1)]
    assert [(e["type"], e["subject"], e["data"]["version"]) for e in events] == [
        ("sluice.batch_deployment.ready", "ep/d", 1)
    ]
