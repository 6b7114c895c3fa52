"""`sluice online-endpoint logs`: recent requests as the gateway logged them.

The local answer to Log Analytics' request queries, from the metrics service's
buffer of Envoy's access log (services/metrics/.../requestlog.py).
"""

from __future__ import annotations

from datetime import UTC

import typer

from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.metrics_cmds import metrics_client
from sluice.sdk.cli.output import OutputFormat, OutputOption, err_console, render
from sluice.sdk.metrics import parse_duration

COLUMNS = ["time", "deployment", "method", "path", "status", "ms", "request_id", "flags"]


def logs(
    name: str = typer.Option(..., "--name", "-n", help="endpoint name"),
    deployment: str = typer.Option("", "--deployment-name", "-d", help="one deployment only"),
    status: str = typer.Option("", "--status", help="a class (5xx, 4xx) or a code (404)"),
    since: str = typer.Option("", "--since", help="only the last 90s, 10m, 1h (default: all kept)"),
    limit: int = typer.Option(100, "--limit", help="newest requests shown (at most 2000)"),
    output: OutputFormat = OutputOption,
) -> None:
    """Recent requests to the endpoint: time, deployment, status, duration, request id."""
    if limit < 1:
        raise CliError("--limit must be at least 1")
    since_s = parse_duration(since, "--since") if since else 0
    with metrics_client() as client:
        page = client.request_logs(name, deployment, status=status, since_s=since_s, limit=limit)
    rows = [
        {
            "time": e.time.ToDatetime(UTC).isoformat(timespec="milliseconds"),
            "deployment": e.deployment_name,
            "method": e.method,
            "path": e.path,
            "status": e.status,
            "ms": round(e.duration_ms, 2),
            "request_id": e.request_id,
            "bytes_in": e.bytes_in,
            "bytes_out": e.bytes_out,
            "upstream": e.upstream,
            "flags": e.response_flags,
        }
        for e in page.entries
    ]
    if output is OutputFormat.table:
        err_console.print(f"{len(rows)} of {page.matched} matching ({page.kept} kept for {name})")
        render(rows, output, columns=COLUMNS)
    else:
        render(rows, output)
