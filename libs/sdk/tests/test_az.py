"""Azure's command-line spellings (`az ml`, global args, `--query`) and `-o tsv`."""

from __future__ import annotations

import pytest
import typer

from sluice.sdk.cli import app
from sluice.sdk.cli.az import AzSetupCommand, normalise
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import tsv

ROOT = typer.main.get_group(app)


@pytest.mark.parametrize(
    ("argv", "args", "query"),
    [
        (
            ["az", "ml", "online-endpoint", "show", "-n", "e", "-g", "rg", "-w", "ws", "--query",
             "scoring_uri", "-o", "tsv"],
            ["online-endpoint", "show", "-n", "e", "-o", "tsv"],
            "scoring_uri",
        ),
        (["ml", "model", "list", "--query=[].name"], ["model", "list"], "[].name"),
        (
            ["online-deployment", "show", "-n", "b", "--endpoint", "e", "--yes", "--no-wait"],
            ["online-deployment", "show", "-n", "b", "--endpoint-name", "e"],
            None,
        ),
        (
            ["online-endpoint", "show", "-n", "e", "--subscription=abc", "--only-show-errors"],
            ["online-endpoint", "show", "-n", "e"],
            None,
        ),
        (
            ["az", "ml", "online-endpoint", "update", "-n", "e", "--set", "a=1", "b.c=2",
             "--add", "tags", "team=ml", "x", "--remove", "tags.old", "-o", "tsv"],
            ["online-endpoint", "update", "-n", "e", "--set", "a=1", "--set", "b.c=2",
             "--add", '["tags", "team=ml", "x"]', "--remove", '["tags.old"]', "-o", "tsv"],
            None,
        ),
        (
            ["az", "monitor", "autoscale", "rule", "create", "--autoscale-name", "a", "-g", "rg",
             "--condition", "RequestsPerMinute > 10 avg 1m", "--scale", "out", "1"],
            ["monitor", "autoscale", "rule", "create", "--autoscale-name", "a", "--condition",
             "RequestsPerMinute > 10 avg 1m", "--scale", "out", "1"],
            None,
        ),
    ],
)  # fmt: skip
def test_normalise(argv: list[str], args: list[str], query: str | None) -> None:
    line = normalise(argv, ROOT)
    assert (line.args, line.query) == (args, query)


def test_az_setup_commands_do_nothing_and_others_are_refused() -> None:
    with pytest.raises(AzSetupCommand, match="az account set: nothing to do"):
        normalise(["az", "account", "set", "-s", "x"], ROOT)
    with pytest.raises(CliError, match="`az vm list` is not supported by Sluice's az forwarder"):
        normalise(["az", "vm", "list"], ROOT)
    with pytest.raises(CliError, match="of `az monitor` it runs `autoscale`"):
        normalise(["az", "monitor", "metrics", "list"], ROOT)
    with pytest.raises(CliError, match=r"`az ml workspace` is not supported by Sluice \(supported"):
        normalise(["az", "ml", "workspace", "show"], ROOT)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("https://e.sluice.localhost/score", "https://e.sluice.localhost/score\n"),
        ({"primaryKey": "a", "secondaryKey": "b"}, "a\tb\n"),
        ({"b": 2, "a": 1, "n": {"x": 1}, "l": [1, 2]}, "1\t2\t2\t\n"),
        ([{"name": "x"}, {"name": "y"}], "x\ny\n"),
        (True, "true\n"),
        (None, ""),
    ],
)
def test_tsv_like_az(value: object, text: str) -> None:
    assert tsv(value) == text


def test_tsv_keeps_a_multiselect_query_order() -> None:
    assert tsv({"b": 2, "a": 1}, ordered=True) == "2\t1\n"
