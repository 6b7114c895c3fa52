"""`sluice trace show|list`: the spans recorded under the state directory (docs/tracing.md)."""

from __future__ import annotations

import sys
import time

import typer

from sluice.common.settings import Settings
from sluice.common.tracing import TRACES
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import OutputFormat, OutputOption, render
from sluice.sdk.metrics import parse_duration

app = typer.Typer(help="Traces recorded on this platform (SLUICE_TRACING__ENABLED).")


@app.command()
def show(
    trace_id: str = typer.Argument(..., help="32 hex digits (printed by a traced command)"),
    output: OutputFormat = OutputOption,
) -> None:
    """Print one trace as a tree: service, span, duration, status, Sluice's attributes."""
    from sluice.common.trace_files import trace_spans, tree_lines

    wanted = trace_id.lower().removeprefix("0x")
    if len(wanted) != 32 or any(c not in "0123456789abcdef" for c in wanted):
        raise CliError(f"{trace_id!r} is not a trace id (32 hex digits)")
    folder = Settings().state_dir / TRACES
    spans = trace_spans(folder, wanted)
    if not spans:
        raise CliError(f"no span of trace {wanted} under {folder}")
    if output is OutputFormat.table:
        sys.stdout.write("\n".join(tree_lines(spans)) + "\n")
    else:
        render(spans, output)


@app.command("list")
def list_(
    since: str = typer.Option("1h", "--since", help="traces started within: 90s, 15m, 1h, 1d"),
    limit: int = typer.Option(20, "--limit", help="newest traces shown"),
    output: OutputFormat = OutputOption,
) -> None:
    """The newest traces: their root span, services and span count."""
    from sluice.common.trace_files import read_spans

    cutoff_ns = (time.time() - parse_duration(since, "--since")) * 1e9
    traces: dict[str, dict[str, object]] = {}
    for span in read_spans(Settings().state_dir / TRACES):
        if (span.get("start") or 0) < cutoff_ns:
            continue
        row = traces.setdefault(
            span["trace_id"],
            {"trace_id": span["trace_id"], "start": span["start"], "root": "", "spans": 0},
        )
        row["spans"] = int(str(row["spans"])) + 1
        services = set(str(row.get("services", "")).split(",")) - {""}
        row["services"] = ",".join(sorted(services | {str(span.get("service"))}))
        if span.get("parent_id") is None or int(str(span["start"])) < int(str(row["start"])):
            row["start"], row["root"] = span["start"], span["name"]
    rows = sorted(traces.values(), key=lambda r: int(str(r["start"])))[-limit:] if limit else []
    for row in rows:
        row["start"] = time.strftime("%H:%M:%S", time.localtime(int(str(row["start"])) / 1e9))
    render(rows, output, columns=["trace_id", "start", "root", "spans", "services"])
