"""Render command results as a Rich table (default), JSON or YAML (`-o`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


OutputOption = typer.Option(OutputFormat.table, "--output", "-o", help="table, json or yaml")

Row = Mapping[str, Any]


def render(
    data: Row | Sequence[Row],
    fmt: OutputFormat,
    *,
    columns: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """Print `data` (one object or a list) in the chosen format.

    JSON and YAML print everything; the table shows `columns` (all keys by default).
    """
    if fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    if fmt is OutputFormat.yaml:
        sys.stdout.write(yaml.safe_dump(_plain(data), sort_keys=False))
        return
    rows = [data] if isinstance(data, Mapping) else list(data)
    keys = list(columns) if columns else _all_keys(rows)
    table = Table(title=title, show_lines=False)
    for key in keys:
        table.add_column(key)
    for row in rows:
        table.add_row(*(_cell(row.get(k)) for k in keys))
    console.print(table)


def _all_keys(rows: Sequence[Row]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    return keys


def _cell(value: Any) -> Text:
    """A table cell as plain text: user data is never read as Rich markup (`x[bold]`)."""
    if value is None:
        return Text("")
    if isinstance(value, Mapping):
        return Text(", ".join(f"{k}={v}" for k, v in value.items()))
    if isinstance(value, list | tuple):
        return Text(", ".join(str(v) for v in value))
    return Text(str(value))


def _plain(value: Any) -> Any:
    """YAML-safe copy: paths, datetimes and enums become strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
