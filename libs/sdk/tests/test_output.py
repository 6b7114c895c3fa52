"""CLI output never reads user text as Rich markup (`inference-schema[numpy-support]`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.sdk.cli import main
from sluice.sdk.cli.common import warn
from sluice.sdk.cli.output import OutputFormat, console, err_console, render

USER_TEXT = "inference-schema[numpy-support] and [bold]not bold[/bold]"


def test_warnings_keep_square_brackets() -> None:
    with err_console.capture() as captured:
        warn([USER_TEXT])
    assert captured.get().strip() == f"warning: {USER_TEXT}"


def test_table_cells_keep_square_brackets() -> None:
    with console.capture() as captured:
        render({"requirement": USER_TEXT}, OutputFormat.table)
    assert "inference-schema[numpy-support]" in captured.get()
    assert "[bold]not bold[/bold]" in captured.get()


def test_errors_keep_square_brackets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLUICE_STATE_DIR", f"{tmp_path}/[red]state[/red]")
    monkeypatch.setattr("sys.argv", ["sluice", "online-endpoint", "list"])
    with err_console.capture() as captured, pytest.raises(SystemExit):
        main()
    assert f"no platform in {tmp_path}/[red]state[/red]" in captured.get()


def test_substitution_warnings_are_read_from_the_status_message() -> None:
    from sluice.common.resources import Meta

    meta = Meta(status_message="warning: python=3.12 runs on 3.11\nwarning: image 'x' is ignored")
    assert meta.warnings == ["python=3.12 runs on 3.11", "image 'x' is ignored"]
    assert Meta(status_message="instance exited").warnings == []
