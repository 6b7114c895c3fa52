"""gRPC face of autoscale settings (`sluice.v1.Autoscale`, beside `Metrics` on the same
port): every create and update is validated in full before anything is stored."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from pymongo.errors import DuplicateKeyError

from sluice.common.autoscale.model import AutoscaleError, AutoscaleSetting, validate
from sluice.common.mongo import Document
from sluice.metrics import autoscale_arm
from sluice.metrics.autoscale import AutoscaleStore, Conflict, setting_of
from sluice.v1 import autoscale_pb2, autoscale_pb2_grpc


def setting_from(request: Any) -> AutoscaleSetting:
    raw = json_format.MessageToDict(
        request, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for profile in raw.get("profiles", []):
        for rule in profile.get("rules", []):
            rule.setdefault("time_grain_statistic", "avg")
            for key, default in (("time_grain_statistic", "avg"), ("time_aggregation", "avg")):
                rule[key] = rule.get(key) or default
            rule["time_grain_s"] = rule.get("time_grain_s") or 60
        profile["timezone"] = profile.get("timezone") or "UTC"
    return AutoscaleSetting.model_validate(raw)


def message_of(doc: Document) -> Any:
    message = autoscale_pb2.AutoscaleSetting()
    json_format.ParseDict(doc["spec"], message, ignore_unknown_fields=True)
    state = doc.get("state") or {}
    message.version = doc["version"]
    message.capacity = int(state.get("capacity") or 0)
    message.evaluated = state.get("capacity") is not None
    message.active_profile = state.get("active_profile") or ""
    message.created_at.FromDatetime(doc["created_at"])
    message.updated_at.FromDatetime(doc["updated_at"])
    for entry in doc.get("decisions", []):
        add_decision(message.decisions, {**entry, "setting": doc["_id"]})
    return message


def add_decision(decisions: Any, entry: Document) -> None:
    """A stored decision (the setting's or the provisioner's) into a repeated field."""
    decision = decisions.add(
        profile=entry["profile"],
        reason=entry["reason"],
        rule=entry["rule"] or "",
        rule_index=-1 if entry["rule_index"] is None else entry["rule_index"],
        metric=entry["metric"] or "",
        value=entry["value"] or 0.0,
        has_value=entry["value"] is not None,
        old_count=entry["old_count"],
        new_count=entry["new_count"],
        setting=entry["setting"],
    )
    decision.time.FromDatetime(entry["time"])


class AutoscaleApi(autoscale_pb2_grpc.AutoscaleServicer):
    def __init__(self, store: AutoscaleStore, bucket_s: int):
        self._store = store
        self._bucket_s = bucket_s

    async def _checked(self, request: Any, context: grpc.aio.ServicerContext) -> AutoscaleSetting:
        try:
            setting = setting_from(request)
        except (AutoscaleError, ValueError) as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return await self._valid(setting, context)

    async def _valid(
        self, setting: AutoscaleSetting, context: grpc.aio.ServicerContext
    ) -> AutoscaleSetting:
        """Every check before a store: the rules, the granularity, that the target exists."""
        try:
            setting = validate(setting)
        except (AutoscaleError, ValueError) as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        for profile in setting.profiles:
            for index, rule in enumerate(profile.rules):
                if rule.time_grain_s % self._bucket_s or rule.window_s % self._bucket_s:
                    await _abort(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"profile {profile.name!r} rule {index}: window {rule.window_s}s or "
                        f"time grain {rule.time_grain_s}s is not a multiple of the metrics' "
                        f"{self._bucket_s}s granularity",
                    )
                source = (rule.metric_endpoint, rule.metric_deployment)
                if (
                    rule.metric_endpoint
                    and rule.metric_deployment
                    and not (await self._store.deployment_exists(*source))
                ):
                    await _abort(
                        context,
                        grpc.StatusCode.NOT_FOUND,
                        f"profile {profile.name!r} rule {index}: metric source "
                        f"{'/'.join(source)} does not exist",
                    )
        if not await self._store.deployment_exists(setting.endpoint_name, setting.deployment_name):
            await _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"deployment {setting.deployment_name!r} of endpoint "
                f"{setting.endpoint_name!r} does not exist",
            )
        return setting

    async def CreateAutoscaleSetting(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        setting = await self._checked(request, context)
        try:
            doc = await self._store.create(setting)
        except DuplicateKeyError:
            if await self._store.get(setting.name) is not None:
                message = f"autoscale setting {setting.name!r} already exists"
            else:
                message = (
                    f"deployment {setting.endpoint_name}/{setting.deployment_name} "
                    "already has an autoscale setting"
                )
            await _abort(context, grpc.StatusCode.ALREADY_EXISTS, message)
        return message_of(doc)

    async def GetAutoscaleSetting(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        doc = await self._store.get(request.name)
        if doc is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, _missing(request.name))
        return message_of(doc)

    async def ListAutoscaleSettings(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        docs = await self._store.list(request.endpoint_name or None)
        return autoscale_pb2.ListAutoscaleSettingsResponse(settings=[message_of(d) for d in docs])

    async def UpdateAutoscaleSetting(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        setting = await self._checked(request, context)
        stored = await self._store.get(setting.name)
        if stored is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, _missing(setting.name))
        if _retargeted(stored, setting):
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "an autoscale setting's target deployment cannot change; delete it "
                "and create a new one",
            )
        try:
            doc = await self._store.update(setting, request.version or stored["version"])
        except Conflict as exc:
            await _abort(context, grpc.StatusCode.ABORTED, str(exc))
        if doc is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, _missing(setting.name))
        return message_of(doc)

    async def DeleteAutoscaleSetting(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not await self._store.delete(request.name):
            await _abort(context, grpc.StatusCode.NOT_FOUND, _missing(request.name))
        return autoscale_pb2.DeleteAutoscaleSettingResponse()

    # ---- REST: Azure Monitor's resource (sluice.metrics.autoscale_arm) ---------------------

    async def PutAutoscaleSettingResource(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        expected = await _if_match(context)
        try:
            wanted = autoscale_arm.setting_in(request.name, request.resource)
        except (AutoscaleError, ValueError) as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        setting = await self._valid(wanted, context)
        stored = await self._store.get(setting.name)
        if stored is None:
            if expected is not None:
                await _abort(
                    context,
                    grpc.StatusCode.ABORTED,
                    f"{_missing(setting.name)}, so no If-Match ETag can match it",
                )
            message = await self.CreateAutoscaleSetting(_message(setting), context)
            doc = await self._store.get(message.name)
        else:
            if _retargeted(stored, setting):
                await _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "properties.targetResourceUri cannot change; delete the setting and "
                    "create a new one",
                )
            version = stored["version"] if expected in (None, -1) else expected
            try:
                doc = await self._store.update(setting, version)
            except Conflict as exc:
                await _abort(context, grpc.StatusCode.ABORTED, str(exc))
        if doc is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, _missing(setting.name))
        headers = [("etag", f'"{doc["version"]}"')]
        if stored is None:
            headers.append(("x-sluice-created", "true"))
        await context.send_initial_metadata(headers)
        return autoscale_arm.resource(doc)

    async def GetAutoscaleSettingResource(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        doc = await self._store.get(request.name)
        if doc is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, _missing(request.name))
        await context.send_initial_metadata([("etag", f'"{doc["version"]}"')])
        return autoscale_arm.resource(doc)

    async def ListAutoscaleSettingResources(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        docs = await self._store.list(request.endpoint_name or None)
        return autoscale_pb2.AutoscaleSettingResourceList(
            value=[autoscale_arm.resource(d) for d in docs]
        )

    async def ListScaleDecisions(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        endpoint, deployment = request.endpoint_name, request.deployment_name
        scale = await self._store.scale_settings(endpoint, deployment)
        if scale is None:
            await _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"deployment {deployment!r} of endpoint {endpoint!r} does not exist",
            )
        setting, entries = await self._store.decisions(endpoint, deployment)
        response = autoscale_pb2.ListScaleDecisionsResponse(
            setting=setting,
            scale_type=scale.type,
            min_instances=scale.min_instances,
        )
        for entry in entries:
            add_decision(response.decisions, entry)
        return response


def _message(setting: AutoscaleSetting) -> Any:
    message = autoscale_pb2.AutoscaleSetting()
    json_format.ParseDict(setting.model_dump(exclude_none=True), message)
    return message


async def _if_match(context: grpc.aio.ServicerContext) -> int | None:
    """The version an If-Match header names (-1 for `*`); None without the header."""
    for key, value in context.invocation_metadata() or ():
        if key == "if-match" and isinstance(value, str):
            text = value.strip().removeprefix("W/").strip('"')
            if text == "*":
                return -1
            if not text.isdigit():
                await _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f'If-Match {value!r} is not an ETag of this API (e.g. "3")',
                )
            return int(text)
    return None


def _retargeted(stored: Any, wanted: Any) -> bool:
    """Whether `wanted` names another deployment than the stored setting does."""
    before = setting_of(stored)
    return (before.endpoint_name, before.deployment_name) != (
        wanted.endpoint_name,
        wanted.deployment_name,
    )


def _missing(name: str) -> str:
    return f"autoscale setting {name!r} does not exist"


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str
) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")
