"""Render command results as `az` does: `-o table|json|jsonc|yaml|yamlc|tsv|none`, `--query`.

`--query` is a JMESPath expression applied to the result before it is
printed (as in `az`); it reaches `render` through `QUERY`, set once per
process by the command line's entry point, so every command has it. `tsv`
follows knack: one line per list item, a mapping's values in key order
(query order for a multiselect), nested lists as their length, nested
mappings as an empty field; a null result prints nothing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from enum import StrEnum
from typing import Any

import jmespath
import typer
import yaml
from jmespath.exceptions import JMESPathError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sluice.sdk.cli.errors import CliError

console = Console()
err_console = Console(stderr=True)
# The `--query` of this invocation (the entry point takes it off the command line).
QUERY: ContextVar[str | None] = ContextVar("QUERY", default=None)


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    jsonc = "jsonc"
    yaml = "yaml"
    yamlc = "yamlc"
    tsv = "tsv"
    none = "none"


OutputOption = typer.Option(
    OutputFormat.table,
    "--output",
    "-o",
    envvar="SLUICE_OUTPUT",
    help="table, json, jsonc, yaml, yamlc, tsv or none",
)

Row = Mapping[str, Any]


def _query(data: Any, expression: str) -> Any:
    try:
        return jmespath.search(expression, data)
    except JMESPathError as exc:
        raise CliError(f"--query {expression!r}: {exc}") from None


def render(
    data: Row | Sequence[Row],
    fmt: OutputFormat,
    *,
    columns: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """Print `data` (one object or a list) in the chosen format, after `--query` if given.

    The table shows `columns` (all keys by default; all keys of the query's result).
    """
    result: Any = _plain(data)
    expression = QUERY.get()
    if expression:
        result = _query(result, expression)
        columns = None
    if fmt is OutputFormat.none or (result is None and fmt is not OutputFormat.table):
        return
    if fmt in (OutputFormat.json, OutputFormat.jsonc):
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=not expression) + "\n")
    elif fmt in (OutputFormat.yaml, OutputFormat.yamlc):
        sys.stdout.write(yaml.safe_dump(result, sort_keys=False))
    elif fmt is OutputFormat.tsv:
        sys.stdout.write(tsv(result, ordered=bool(expression)))
    else:
        _table(result, columns, title)


def tsv(value: Any, *, ordered: bool = False) -> str:
    """knack's tsv: rows for list items, tab-separated mapping values, no header."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true\n" if value else "false\n"
    rows = value if isinstance(value, list) else [value]
    return "".join(_tsv_row(row, ordered) + "\n" for row in rows)


def _tsv_row(row: Any, ordered: bool) -> str:
    if isinstance(row, Mapping):
        keys = list(row) if ordered else sorted(row)
        return "\t".join(_tsv_cell(row[k]) for k in keys)
    if isinstance(row, list):
        return "\t".join(_tsv_cell(v) for v in row)
    return _tsv_cell(row)


def _tsv_cell(value: Any) -> str:
    if isinstance(value, Mapping):
        return ""
    if isinstance(value, list):
        return str(len(value))
    return str(value)


def _table(result: Any, columns: Sequence[str] | None, title: str | None) -> None:
    if not isinstance(result, Mapping | list):
        console.print(_cell(result), highlight=False)
        return
    rows = [result] if isinstance(result, Mapping) else list(result)
    if rows and not all(isinstance(r, Mapping) for r in rows):
        for row in rows:
            console.print(_cell(row), highlight=False)
        return
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
