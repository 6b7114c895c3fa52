"""Python client for the metrics service: metrics over a window, costs, alert rules.

`MetricsClient.connect()` finds the local platform's metrics service (or
`SLUICE_METRICS_ADDRESS`) and its admin token like `RegistryClient.connect()`.
Durations are written as Azure's CLI writes them: `15m`, `24h`, `90s`, `1d` or
ISO 8601 (`PT15M`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml

from sluice.common.platform import LocalPlatform
from sluice.common.settings import Settings
from sluice.sdk.channel import reads_channel, unreachable
from sluice.sdk.client import SluiceError, admin_token
from sluice.v1 import metrics_pb2, metrics_pb2_grpc, requestlogs_pb2, requestlogs_pb2_grpc

T = TypeVar("T")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SHORT = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
ISO = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def parse_duration(text: str, what: str = "duration") -> int:
    """Seconds in `15m`, `24h`, `1d`, `90s`, `PT5M` or a bare number of seconds."""
    value = str(text).strip()
    if value.isdigit():
        return int(value)
    if m := SHORT.match(value):
        return int(float(m.group(1)) * UNITS[m.group(2)])
    if (m := ISO.match(value.upper())) and any(m.groups()):
        d, h, mi, s = (int(g or 0) for g in m.groups())
        return d * 86400 + h * 3600 + mi * 60 + s
    raise SluiceError(
        "INVALID_ARGUMENT", f"{what} {text!r} is not a duration such as 90s, 15m, 24h, 1d or PT5M"
    )


RULE_FIELDS = {
    "name",
    "metric",
    "scope",
    "aggregation",
    "operator",
    "threshold",
    "window",
    "for",
    "description",
}


def load_alert_rule(path: Path) -> Any:
    """An alert rule from YAML (docs/metrics.md, "Alert rules"), as the proto message."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SluiceError("INVALID_ARGUMENT", f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise SluiceError("INVALID_ARGUMENT", f"{path}: an alert rule is a YAML mapping")
    unknown = set(raw) - RULE_FIELDS
    if unknown:
        raise SluiceError(
            "INVALID_ARGUMENT",
            f"{path}: unknown field(s) {', '.join(sorted(unknown))}; allowed: "
            f"{', '.join(sorted(RULE_FIELDS))}",
        )
    missing = {"name", "metric", "scope", "operator", "threshold"} - set(raw)
    if missing:
        raise SluiceError("INVALID_ARGUMENT", f"{path}: missing {', '.join(sorted(missing))}")
    scope = raw["scope"] if isinstance(raw["scope"], dict) else {}
    if not scope.get("endpoint"):
        raise SluiceError("INVALID_ARGUMENT", f"{path}: scope.endpoint is required")
    try:
        threshold = float(raw["threshold"])
    except (TypeError, ValueError):
        raise SluiceError(
            "INVALID_ARGUMENT", f"{path}: threshold {raw['threshold']!r} is not a number"
        ) from None
    return metrics_pb2.AlertRule(
        name=str(raw["name"]),
        metric=str(raw["metric"]),
        endpoint_name=str(scope["endpoint"]),
        deployment_name=str(scope.get("deployment") or ""),
        aggregation=str(raw.get("aggregation", "avg")),
        operator=str(raw["operator"]),
        threshold=threshold,
        window_s=parse_duration(raw.get("window", "5m"), "window"),
        for_s=parse_duration(raw.get("for", "0s"), "for"),
        description=str(raw.get("description", "")),
    )


class MetricsClient:
    def __init__(self, address: str, token: str):
        self.address = address
        self._channel = reads_channel(
            address,
            [
                metrics_pb2.DESCRIPTOR.services_by_name["Metrics"],
                requestlogs_pb2.DESCRIPTOR.services_by_name["RequestLogs"],
            ],
        )
        self._stub = metrics_pb2_grpc.MetricsStub(self._channel)
        self._logs = requestlogs_pb2_grpc.RequestLogsStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)

    @classmethod
    def connect(cls, settings: Settings | None = None) -> MetricsClient:
        settings = settings or Settings()
        platform = LocalPlatform(settings)
        address = settings.metrics_address
        if not address:
            state = platform.load_state()
            found = [p for p in (state.processes if state else []) if p.name == "metrics"]
            if not found:
                raise SluiceError(
                    "UNAVAILABLE",
                    f"no metrics service runs on the platform in {platform.state_dir} "
                    "(`sluice status`); set SLUICE_METRICS_ADDRESS for a remote one",
                )
            address = found[0].address
        return cls(address, admin_token(settings, platform.state_dir))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> MetricsClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, metadata=self._metadata, timeout=30)
        except grpc.RpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.UNAVAILABLE:
                raise SluiceError(
                    "UNAVAILABLE", unreachable("the metrics service", self.address, exc)
                ) from None
            raise SluiceError(code.name, exc.details() or code.name) from None

    def endpoint_metrics(
        self, endpoint: str, deployment: str = "", *, since_s: int = 900, step_s: int = 60
    ) -> Any:
        request = metrics_pb2.GetEndpointMetricsRequest(
            endpoint_name=endpoint, deployment_name=deployment, step_s=step_s
        )
        now = time.time()
        request.window.start.FromNanoseconds(int((now - since_s) * 1e9))
        request.window.end.FromNanoseconds(int(now * 1e9))
        return self._call(self._stub.GetEndpointMetrics, request)

    def costs(self, endpoint: str = "", deployment: str = "", *, since_s: int = 86400) -> Any:
        request = metrics_pb2.GetCostsRequest(endpoint_name=endpoint, deployment_name=deployment)
        now = time.time()
        request.window.start.FromNanoseconds(int((now - since_s) * 1e9))
        request.window.end.FromNanoseconds(int(now * 1e9))
        return self._call(self._stub.GetCosts, request)

    def create_alert_rule(self, rule: Any) -> Any:
        return self._call(self._stub.CreateAlertRule, rule)

    def list_alert_rules(self, endpoint: str = "") -> list[Any]:
        request = metrics_pb2.ListAlertRulesRequest(endpoint_name=endpoint)
        return list(self._call(self._stub.ListAlertRules, request).rules)

    def request_logs(
        self,
        endpoint: str,
        deployment: str = "",
        *,
        status: str = "",
        since_s: int = 0,
        limit: int = 0,
    ) -> Any:
        """The gateway's newest access-log entries of an endpoint (requestlogs.proto)."""
        request = requestlogs_pb2.GetRequestLogsRequest(
            endpoint_name=endpoint,
            deployment_name=deployment,
            status=status,
            since_seconds=since_s,
            limit=limit,
        )
        return self._call(self._logs.GetRequestLogs, request)

    def delete_alert_rule(self, name: str) -> None:
        self._call(self._stub.DeleteAlertRule, metrics_pb2.DeleteAlertRuleRequest(name=name))
