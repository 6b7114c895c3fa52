"""`sluice online-endpoint metrics` and `show-costs`: what an endpoint did and what it cost."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
from typing import Any

import typer
from rich.live import Live
from rich.table import Table

from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import OutputFormat, OutputOption, console, err_console, render
from sluice.sdk.metrics import MetricsClient, parse_duration

BARS = "▁▂▃▄▅▆▇█"
COLUMNS = [
    "time",
    "deployment",
    "requests",
    "rpm",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "2xx",
    "4xx",
    "5xx",
    "mirrored",
    "cpu_%",
    "memory_%",
    "instances",
    "connections",
]


@contextmanager
def metrics_client() -> Iterator[MetricsClient]:
    with MetricsClient.connect() as client:
        yield client


NO_USAGE = "no usage data for kubernetes deployments"


def no_usage_note(deployments: Sequence[str], what: str) -> str:
    """The line said instead of zeros for deployments nothing measures (docs/metrics.md)."""
    return f"{NO_USAGE} ({what}): {', '.join(deployments)}"


def row_of(point: Any, unmeasured: Sequence[str] = ()) -> dict[str, Any]:
    """One point as a row; a deployment in `unmeasured` (kubernetes: no usage samples) has
    no CPU, memory or instance count (empty, null in JSON), not 0."""
    classes = dict(point.responses_by_status_class)
    measured = point.deployment_name not in unmeasured
    return {
        "time": point.time.ToDatetime(UTC).strftime("%Y-%m-%d %H:%M"),
        "deployment": point.deployment_name or "(endpoint)",
        "requests": point.requests,
        "rpm": round(point.requests_per_minute, 1),
        "p50_ms": round(point.latency_p50_ms, 1),
        "p90_ms": round(point.latency_p90_ms, 1),
        "p95_ms": round(point.latency_p95_ms, 1),
        "p99_ms": round(point.latency_p99_ms, 1),
        "avg_ms": round(point.latency_avg_ms, 1),
        "2xx": classes.get("2xx", 0),
        "4xx": classes.get("4xx", 0),
        "5xx": classes.get("5xx", 0),
        "status_codes": dict(point.responses_by_status_code),
        "failures": dict(point.failures),
        "mirrored": point.mirrored_requests,
        "bytes_in": point.bytes_in,
        "bytes_out": point.bytes_out,
        "cpu_%": round(point.cpu_utilization_percent, 1) if measured else None,
        "memory_%": round(point.memory_utilization_percent, 1) if measured else None,
        "instances": point.instance_count if measured else None,
        "connections": point.active_connections,
    }


def window_length(text: str, option: str) -> int:
    """`--since`/`--step` in seconds; 0 is refused (the service would read it as its default)."""
    seconds = parse_duration(text, option)
    if seconds <= 0:
        raise CliError(f"{option} {text!r} must be longer than 0s")
    return seconds


def sparkline(values: Sequence[float]) -> str:
    if not values:
        return ""
    top = max(values) or 1.0
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1)))] for v in values)


def live_table(reply: Any, step_s: int) -> Table:
    """One line per deployment: sparklines of RPM and P99 over the window, last values."""
    table = Table(title=f"{reply.endpoint_name}: last {step_s}s steps (Ctrl-C to stop)")
    for col in ("deployment", "RPM", "rpm now", "P99 ms", "p99 now", "errors", "instances"):
        table.add_column(col)
    series: dict[str, list[Any]] = {}
    for point in reply.points:
        series.setdefault(point.deployment_name, []).append(point)
    now = time.time()
    for name, points in sorted(series.items()):
        # "now" is the newest step that has ended: the one still filling reads low.
        ended = [p for p in points if p.time.seconds + step_s <= now]
        last = ended[-1] if ended else points[-1]
        classes = dict(last.responses_by_status_class)
        table.add_row(
            name or "(endpoint)",
            sparkline([p.requests_per_minute for p in points]),
            f"{last.requests_per_minute:.1f}",
            sparkline([p.latency_p99_ms for p in points]),
            f"{last.latency_p99_ms:.1f}",
            str(classes.get("4xx", 0) + classes.get("5xx", 0)),
            "-" if name in reply.no_usage_deployments else str(last.instance_count),
        )
    if reply.no_usage_deployments:
        table.caption = no_usage_note(reply.no_usage_deployments, "instances")
    return table


def metrics(
    name: str = typer.Option(..., "--name", "-n", help="endpoint name"),
    deployment: str = typer.Option("", "--deployment-name", "-d", help="one deployment only"),
    since: str = typer.Option("15m", "--since", help="window up to now: 15m, 24h, 1d, PT1H"),
    step: str = typer.Option("1m", "--step", help="bucket width, a multiple of 1m"),
    watch: bool = typer.Option(False, "--watch", help="refresh in place every 5 s"),
    output: OutputFormat = OutputOption,
) -> None:
    """Requests per minute, latency P50-P99, status classes, CPU, memory and instances."""
    since_s, step_s = window_length(since, "--since"), window_length(step, "--step")
    with metrics_client() as client:
        reply = client.endpoint_metrics(name, deployment, since_s=since_s, step_s=step_s)
        if watch:
            if output is not OutputFormat.table:
                raise CliError("--watch shows a live table: leave out -o")
            with Live(live_table(reply, step_s), console=console, auto_refresh=False) as live:
                try:
                    while True:
                        time.sleep(5)
                        reply = client.endpoint_metrics(
                            name, deployment, since_s=since_s, step_s=step_s
                        )
                        live.update(live_table(reply, step_s), refresh=True)
                except KeyboardInterrupt:
                    return
    unmeasured = list(reply.no_usage_deployments)
    rows = [row_of(p, unmeasured) for p in reply.points]
    if output is OutputFormat.table:
        render(rows, output, columns=COLUMNS, title=f"Metrics of {name} ({step} steps)")
    else:
        render(rows, output)
    if unmeasured:
        err_console.print(no_usage_note(unmeasured, "CPU, memory, instances"), highlight=False)


def show_costs(
    name: str = typer.Option(..., "--name", "-n", help="endpoint name"),
    deployment: str = typer.Option("", "--deployment-name", "-d", help="one deployment only"),
    since: str = typer.Option("24h", "--since", help="window up to now: 24h, 7d, PT1H"),
    output: OutputFormat = OutputOption,
) -> None:
    """The endpoint's cost over the window: the total and one line per deployment."""
    since_s = window_length(since, "--since")
    with metrics_client() as client:
        report = client.costs(name, deployment, since_s=since_s)
    lines = [
        {
            "deployment": line.deployment_name,
            "instance_type": line.instance_type,
            "instance_hours": round(line.instance_hours, 4),
            "hourly_price": line.hourly_price,
            "cost": round(line.cost, 4),
            "running_instances": line.running_instances,
            "kind": line.kind,
        }
        for line in report.lines
    ]
    unmeasured = [d.partition("/")[2] for d in report.no_usage_deployments]
    data: dict[str, Any] = {
        "endpoint": name,
        "since": since,
        "currency": report.currency,
        "total": round(report.total, 4),
        "deployments": lines,
    }
    if unmeasured:  # not costed: no instance-hours are recorded for them (not a cost of 0)
        data["no_usage_data"] = unmeasured
    if output is not OutputFormat.table:
        render(data, output)
    else:
        render(
            lines,
            output,
            columns=[
                "deployment",
                "kind",
                "instance_type",
                "instance_hours",
                "hourly_price",
                "cost",
            ],
            title=f"Costs of {name} over {since}: {report.total:.4f} {report.currency}",
        )
    if unmeasured:
        err_console.print(no_usage_note(unmeasured, "not costed"), highlight=False)
