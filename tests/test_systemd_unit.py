"""deploy/systemd/sluice.service: a valid unit that runs the supervisor in the foreground."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from typer.testing import CliRunner

from sluice.sdk.cli import app

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "systemd" / "sluice.service"


def parse_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_unit_runs_sluice_up_in_the_foreground_and_stops_with_sluice_down() -> None:
    unit = parse_unit(UNIT)
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert service["Type"] == "simple"  # the supervisor is the main process: it must not fork
    start, stop = shlex.split(service["ExecStart"]), shlex.split(service["ExecStop"])
    assert Path(start[0]).name == "sluice" and start[1:] == ["up", "--foreground"]
    assert Path(stop[0]).name == "sluice" and stop[1:] == ["down"]
    assert Path(start[0]).is_absolute() and Path(stop[0]).is_absolute()  # systemd wants them
    assert service["Restart"] == "on-failure"
    assert service["Environment"].startswith("SLUICE_STATE_DIR=/")
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_cli_has_the_options_the_unit_uses() -> None:
    result = CliRunner().invoke(app, ["up", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--foreground" in result.output
