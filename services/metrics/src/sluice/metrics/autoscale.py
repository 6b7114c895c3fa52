"""Autoscale settings: stored in `autoscale_settings` (this service is their only
writer) and evaluated every snapshot interval on the same minute buckets the
snapshots and alert rules read.

Every change and every scale decision is written with its CloudEvent in one MongoDB
transaction (transactional outbox, relayed to JetStream): `sluice.autoscale.created|
updated|deleted` and `sluice.autoscale.scaled` (rule, observed value, old and new
count). The provisioner reads the setting's `state.capacity` when it sees one of them
and runs that many instances. The rules themselves are `sluice.common.autoscale`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.autoscale.engine import Decision, active_profile, decide
from sluice.common.autoscale.model import AutoscaleRule, AutoscaleSetting
from sluice.common.events import Outbox
from sluice.common.events.catalogue import (
    AUTOSCALE_CHANGED,
    AUTOSCALE_SCALED,
    AutoscaleChanged,
    AutoscaleScaled,
)
from sluice.common.log import get_logger
from sluice.common.mongo import Document
from sluice.common.resources import (
    KEEP_SCALE_DECISIONS,
    ONLINE_DEPLOYMENTS,
    SCALE_DECISIONS,
    ScaleSettings,
    deployment_id,
)
from sluice.metrics import alerts
from sluice.metrics.store import MetricsStore

log = get_logger(__name__)
AUTOSCALE_SETTINGS = "autoscale_settings"
ACTOR = "sluice/metrics"
KEEP_DECISIONS = 20


class Conflict(RuntimeError):
    """The setting changed since it was read (optimistic concurrency on `version`)."""


def target(endpoint: str, deployment: str) -> str:
    """One setting per deployment (as Azure: one autoscale setting per resource)."""
    return deployment_id(endpoint, deployment).lower()


def setting_of(doc: Document) -> AutoscaleSetting:
    return AutoscaleSetting.model_validate(doc["spec"])


def fresh_state() -> Document:
    """A setting's evaluation state before its first tick. `capacity` None: not evaluated
    yet (the first tick starts from the deployment's count); `deployment_created_at`: the
    creation time of the deployment the capacity was decided for (a deployment deleted
    and created again under the same name is another one)."""
    return {
        "capacity": None,
        "last_action_at": None,
        "active_profile": "",
        "deployment_created_at": None,
    }


class AutoscaleStore:
    def __init__(self, db: AsyncDatabase[Document], outbox: Outbox):
        self._c = db[AUTOSCALE_SETTINGS]
        self._db = db
        self._outbox = outbox

    async def ensure_indexes(self) -> None:
        await self._c.create_index([("target", ASCENDING)], unique=True)

    async def deployment_exists(self, endpoint: str, deployment: str) -> bool:
        found = await self._db[ONLINE_DEPLOYMENTS].find_one(
            {"_id": deployment_id(endpoint, deployment)}, {"_id": 1}
        )
        return found is not None

    async def deployment(self, endpoint: str, deployment: str) -> tuple[int, str] | None:
        """(its `instance_count`, its creation time as stored: which incarnation of the
        name it is) or None when there is no such deployment."""
        doc = await self._db[ONLINE_DEPLOYMENTS].find_one(
            {"_id": deployment_id(endpoint, deployment)},
            {"spec.instance_count": 1, "meta.created_at": 1},
        )
        if doc is None:
            return None
        created = (doc.get("meta") or {}).get("created_at") or ""
        return int(doc["spec"].get("instance_count", 1)), str(created)

    async def scale_settings(self, endpoint: str, deployment: str) -> ScaleSettings | None:
        """The deployment's own `spec.scale_settings` (None: no such deployment)."""
        doc = await self._db[ONLINE_DEPLOYMENTS].find_one(
            {"_id": deployment_id(endpoint, deployment)}, {"spec.scale_settings": 1}
        )
        if doc is None:
            return None
        return ScaleSettings.model_validate(doc.get("spec", {}).get("scale_settings") or {})

    async def decisions(self, endpoint: str, deployment: str) -> tuple[str, list[Document]]:
        """(the setting targeting the deployment or "", the recent decisions about it,
        most recent first): the setting's and the provisioner's for the deployment's own
        scale_settings (`scale_decisions`, which the provisioner writes)."""
        setting = await self._c.find_one({"target": target(endpoint, deployment)})
        own = await self._db[SCALE_DECISIONS].find_one({"_id": deployment_id(endpoint, deployment)})
        name = "" if setting is None else str(setting["_id"])
        merged = [{**d, "setting": name} for d in (setting or {}).get("decisions", [])]
        merged += [{**d, "setting": "scale_settings"} for d in (own or {}).get("decisions", [])]
        merged.sort(key=lambda d: d["time"], reverse=True)
        return name, merged[:KEEP_SCALE_DECISIONS]

    async def get(self, name: str) -> Document | None:
        return await self._c.find_one({"_id": name})

    async def list(self, endpoint: str | None = None) -> list[Document]:
        query = {"spec.endpoint_name": endpoint} if endpoint else {}
        return [doc async for doc in self._c.find(query).sort("_id", 1)]

    def _changed(self, verb: str, doc: Document) -> tuple[Any, AutoscaleChanged, str]:
        spec = doc["spec"]
        data = AutoscaleChanged(
            name=doc["_id"],
            endpoint=spec["endpoint_name"],
            deployment=spec["deployment_name"],
            version=doc["version"],
        )
        return AUTOSCALE_CHANGED[verb], data, f"{data.endpoint}/{data.deployment}"

    async def create(self, setting: AutoscaleSetting) -> Document:
        """DuplicateKeyError when the name or the target deployment already has a setting."""
        now = datetime.now(UTC)
        doc: Document = {
            "_id": setting.name,
            "target": target(setting.endpoint_name, setting.deployment_name),
            "spec": setting.model_dump(),
            "version": 1,
            "created_at": now,
            "updated_at": now,
            # capacity None: not evaluated yet (the first tick starts from the deployment's count)
            "state": fresh_state(),
            "decisions": [],
        }
        async with self._outbox.transaction() as tx:
            await self._c.insert_one(doc, session=tx.session)
            spec, data, subject = self._changed("created", doc)
            tx.emit(spec, data, subject=subject, actor=ACTOR)
        return doc

    async def update(self, setting: AutoscaleSetting, version: int) -> Document | None:
        """None: no such setting; Conflict: `version` is not the stored one.

        A setting switched off, or on again, forgets its evaluation state: disabled, the
        deployment's own count applies (docs/autoscale.md), and re-enabled it starts from
        that count again, never from a capacity decided before it was switched off."""
        changes: Document = {"spec": setting.model_dump(), "updated_at": datetime.now(UTC)}
        async with self._outbox.transaction() as tx:
            before = await self._c.find_one(
                {"_id": setting.name, "version": version}, {"spec.enabled": 1}, session=tx.session
            )
            if before is not None and not (before["spec"].get("enabled", True) and setting.enabled):
                changes["state"] = fresh_state()
            doc = await self._c.find_one_and_update(
                {"_id": setting.name, "version": version},
                {"$set": changes, "$inc": {"version": 1}},
                return_document=ReturnDocument.AFTER,
                session=tx.session,
            )
            if doc is None:
                if await self._c.find_one({"_id": setting.name}, session=tx.session) is None:
                    return None
                raise Conflict(
                    f"autoscale setting {setting.name!r} changed since version {version}; "
                    "read it again"
                )
            spec, data, subject = self._changed("updated", doc)
            tx.emit(spec, data, subject=subject, actor=ACTOR)
        return doc

    async def delete(self, name: str) -> bool:
        async with self._outbox.transaction() as tx:
            doc = await self._c.find_one_and_delete({"_id": name}, session=tx.session)
            if doc is None:
                return False
            spec, data, subject = self._changed("deleted", doc)
            tx.emit(spec, data, subject=subject, actor=ACTOR)
        return True

    async def record(
        self, doc: Document, decision: Decision, now: datetime, data_from: float, deployment: str
    ) -> None:
        """The decision, the new capacity and its event, in one transaction. `data_from`
        (epoch): the start of the metric data it was made on (a wake-up before it is not
        overruled by it, see the provisioner's activator); `deployment`: the creation time
        of the deployment it was made for."""
        entry = {
            "time": now,
            "profile": decision.profile,
            "reason": decision.reason,
            "rule": decision.rule,
            "rule_index": decision.rule_index,
            "metric": decision.metric,
            "value": decision.value,
            "old_count": decision.old_count,
            "new_count": decision.new_count,
            "data_from": data_from,
        }
        spec = doc["spec"]
        data = AutoscaleScaled(
            name=doc["_id"],
            endpoint=spec["endpoint_name"],
            deployment=spec["deployment_name"],
            **{k: v for k, v in entry.items() if k != "time"},
        )
        async with self._outbox.transaction() as tx:
            # Only onto the setting it was decided on: one edited since the tick read it (a
            # lower max_count) is left as it is, for the next tick to decide on.
            written = await self._c.update_one(
                {"_id": doc["_id"], "version": doc["version"]},
                {
                    "$set": {
                        "state": {
                            "capacity": decision.new_count,
                            "last_action_at": now.timestamp(),
                            "active_profile": decision.profile,
                            "deployment_created_at": deployment,
                        }
                    },
                    "$push": {
                        "decisions": {"$each": [entry], "$position": 0, "$slice": KEEP_DECISIONS}
                    },
                },
                session=tx.session,
            )
            if written.matched_count == 0:
                log.info("autoscale_decision_dropped", setting=doc["_id"], reason="edited")
                return
            tx.emit(
                AUTOSCALE_SCALED, data, subject=f"{data.endpoint}/{data.deployment}", actor=ACTOR
            )
        log.info("autoscaled", setting=doc["_id"], **data.model_dump(exclude={"name"}))

    async def start(self, name: str, capacity: int, deployment: str) -> None:
        """The count the setting starts from (the deployment's), when no rule acted;
        `deployment`: that deployment's creation time."""
        await self._c.update_one(
            {"_id": name},
            {"$set": {"state.capacity": capacity, "state.deployment_created_at": deployment}},
        )

    async def forget(self, name: str) -> None:
        """Its deployment is gone or was created again: what was decided for the old one
        does not carry over (the next tick starts from the new deployment's count)."""
        await self._c.update_one({"_id": name}, {"$set": {"state": fresh_state()}})

    async def set_active_profile(self, name: str, profile: str) -> None:
        await self._c.update_one({"_id": name}, {"$set": {"state.active_profile": profile}})


class Autoscaler:
    """Evaluates every enabled setting once per `tick` (the service calls it every
    snapshot interval, right after the snapshots; tests call it with their own clock)."""

    def __init__(self, store: AutoscaleStore, metrics: MetricsStore, bucket_s: int):
        self._store = store
        self._metrics = metrics
        self._bucket_s = bucket_s

    async def tick(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        for doc in await self._store.list():
            try:
                await self._one(doc, now)
            except Exception as exc:  # one broken setting must not stop the others
                log.warning("autoscale_setting_failed", setting=doc["_id"], error=str(exc))

    async def _one(self, doc: Document, now: datetime) -> None:
        setting = setting_of(doc)
        if not setting.enabled:
            return
        state = doc.get("state") or {}
        found = await self._store.deployment(setting.endpoint_name, setting.deployment_name)
        if found is None:  # the deployment is gone: its setting stays (as on Azure), its state not
            if state.get("capacity") is not None:
                await self._store.forget(doc["_id"])
            return
        instance_count, created = found
        was_for = state.get("deployment_created_at")
        if state.get("capacity") is not None and was_for is not None and was_for != created:
            # Deleted and created again between two ticks: a new deployment, its own count.
            await self._store.forget(doc["_id"])
            state = fresh_state()
        profile = active_profile(setting, now)
        if state.get("active_profile") != profile.name:
            await self._store.set_active_profile(doc["_id"], profile.name)
        capacity = state.get("capacity")
        if capacity is None:  # not evaluated yet: start from the deployment's own count
            current = instance_count
        elif capacity == 0:
            # At zero a held request wakes an instance without asking (activator.py): count
            # what runs, so that an idle period takes it back to zero with a decision.
            current = await self._running(setting, now)
        else:
            current = int(capacity)
        values = [await self._value(setting, rule, now) for rule in profile.rules]
        decision = decide(profile, current, values, now.timestamp(), state.get("last_action_at"))
        if decision is not None:
            data_from = now.timestamp()  # bounds and defaults use no metric data
            if decision.rule_index is not None:
                rule = profile.rules[decision.rule_index]
                data_from = alerts.window_of(
                    {"window_s": rule.window_s}, now.timestamp(), self._bucket_s
                )[0]
            await self._store.record(doc, decision, now, data_from, created)
        elif capacity is None:
            await self._store.start(doc["_id"], current, created)
        elif was_for is None:  # a state stored before deployments were told apart
            await self._store.start(doc["_id"], int(capacity), created)

    async def _running(self, setting: AutoscaleSetting, now: datetime) -> int:
        """Instances that sent usage samples in the last two closed buckets."""
        probe = AutoscaleRule(
            metric="DeploymentCapacity",
            time_aggregation="max",
            window_s=2 * self._bucket_s,
            time_grain_s=self._bucket_s,
        )
        return int(await self._value(setting, probe, now) or 0)

    async def _value(
        self, setting: AutoscaleSetting, rule: AutoscaleRule, now: datetime
    ) -> float | None:
        """The rule's metric over its window, from closed buckets only (a bucket still
        filling would read as a drop in requests per minute); `divide_per_instance`: each
        bucket's value divided by the target deployment's instances in that bucket."""
        endpoint = rule.metric_endpoint or setting.endpoint_name
        deployment = rule.metric_deployment if rule.metric_endpoint else setting.deployment_name
        spec = {
            "deployment": deployment,
            "window_s": rule.window_s,
            "metric": rule.metric,
            "aggregation": rule.time_aggregation,
        }
        oldest, end = alerts.window_of(spec, now.timestamp(), self._bucket_s)
        docs = await self._metrics.minutes(
            endpoint,
            deployment or None,
            datetime.fromtimestamp(oldest, UTC),
            datetime.fromtimestamp(end, UTC),
        )
        if not rule.divide_per_instance:
            return alerts.evaluate(docs, spec, now.timestamp(), self._bucket_s)
        spec["per_instance_of"] = setting.deployment_name
        instance_docs = docs
        if (endpoint, deployment) != (setting.endpoint_name, setting.deployment_name):
            instance_docs = await self._metrics.minutes(
                setting.endpoint_name,
                setting.deployment_name,
                datetime.fromtimestamp(oldest, UTC),
                datetime.fromtimestamp(end, UTC),
            )
        return alerts.evaluate_per_instance(
            docs, instance_docs, spec, now.timestamp(), self._bucket_s
        )
