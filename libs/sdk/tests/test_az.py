"""Azure's command-line spellings (`az ml`, global args, `--query`) and `-o tsv`."""

from __future__ import annotations

import pytest
import typer

from sluice.sdk.cli import app
from sluice.sdk.cli.az import GLOBAL_WITH_VALUE, AzReply, AzSetupCommand, normalise
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
            ["az", "ml", "model", "create", "-n", "m", "-p", "x", "--tags", "a=1", "b=2", "-s",
             "Production"],
            ["model", "create", "-n", "m", "-p", "x", "--tags", "a=1", "--tags", "b=2", "-s",
             "Production"],
            None,
        ),
        (
            ["az", "ml", "model", "update", "-n", "m", "-v", "1", "--set", "tags.stage=prod"],
            ["model", "update", "-n", "m", "-v", "1", "--set", "tags.stage=prod"],
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


@pytest.mark.parametrize(
    ("argv", "args"),
    [
        (  # deploy-managed-online-endpoint-ncd.sh
            ["az", "ml", "online-endpoint", "invoke", "-n", "e", "--deployment", "lightgbm",
             "--request", "r.json"],
            ["online-endpoint", "invoke", "-n", "e", "--deployment-name", "lightgbm",
             "--request-file", "r.json"],
        ),
        (
            ["az", "ml", "batch-endpoint", "invoke", "-n", "e", "--f", "inputs.yml", "--input",
             "x", "--work", "ws", "--sub=s"],
            ["batch-endpoint", "invoke", "-n", "e", "--file", "inputs.yml", "--input", "x"],
        ),
        (
            ["online-deployment", "update", "-n", "b", "--endpoint=e", "--se", "a=1", "b=2"],
            ["online-deployment", "update", "-n", "b", "--endpoint-name=e", "--set", "a=1",
             "--set", "b=2"],
        ),
        (["model", "list", "--qu", "[].name"], ["model", "list"]),
        (["model", "list", "--nope"], ["model", "list", "--nope"]),  # left for typer to refuse
    ],
)  # fmt: skip
def test_a_unique_prefix_of_a_long_option_is_that_option(argv: list[str], args: list[str]) -> None:
    assert normalise(argv, ROOT).args == args


def test_an_ambiguous_prefix_names_the_options_it_could_be() -> None:
    with pytest.raises(
        CliError, match="ambiguous option: --out could match --output, --output-path, --outputs"
    ):
        normalise(["az", "ml", "batch-endpoint", "invoke", "-n", "e", "--out", "x"], ROOT)


def test_az_version_and_config_get_are_answered() -> None:
    with pytest.raises(AzReply, match=r"^sluice-sdk \d"):
        normalise(["az", "--version"], ROOT)
    line = normalise(["az", "config", "get", "defaults", "--query", "[0]", "-o", "tsv"], ROOT)
    assert (line.args, line.query) == (["shim", "az-config-get", "defaults", "-o", "tsv"], "[0]")


def test_az_setup_commands_do_nothing_and_others_are_refused() -> None:
    with pytest.raises(AzSetupCommand, match="az account set: nothing to do"):
        normalise(["az", "account", "set", "-s", "x"], ROOT)
    with pytest.raises(CliError, match="`az vm list` is not supported by Sluice's az forwarder"):
        normalise(["az", "vm", "list"], ROOT)
    with pytest.raises(CliError, match="of `az monitor` it runs `autoscale`"):
        normalise(["az", "monitor", "metrics", "list"], ROOT)
    with pytest.raises(CliError, match=r"`az ml workspace` is not supported by Sluice \(supported"):
        normalise(["az", "ml", "workspace", "show"], ROOT)


def _walk(
    group: typer.core.TyperGroup, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], set[str]]]:
    """Every command of the tree with its option names."""
    found = []
    for name in group.list_commands(None):
        node = group.get_command(None, name)
        if hasattr(node, "get_command"):
            found += _walk(node, (*path, name))
        else:
            found.append(((*path, name), {o for p in node.params for o in p.opts}))
    return found


def test_no_command_declares_an_az_global_argument() -> None:
    # normalise drops az's global arguments (-w is --workspace-name) from every command line:
    # an option spelled the same would never reach its command.
    clashes = [(" ".join(path), opts & GLOBAL_WITH_VALUE) for path, opts in _walk(ROOT)]
    assert [c for c in clashes if c[1]] == []


def test_metrics_watch_is_long_only_and_w_stays_the_workspace() -> None:
    line = normalise(
        ["az", "ml", "online-endpoint", "metrics", "-w", "ws", "-n", "e", "--watch"], ROOT
    )
    assert line.args == ["online-endpoint", "metrics", "-n", "e", "--watch"]


def test_output_is_accepted_and_ignored_by_commands_without_it() -> None:
    line = normalise(
        ["az", "ml", "online-endpoint", "delete", "-n", "e", "--yes", "-o", "none"], ROOT
    )
    assert line.args == ["online-endpoint", "delete", "-n", "e", "--yes"]
    line = normalise(["batch-deployment", "delete", "-n", "d", "-e", "e", "--output=json"], ROOT)
    assert line.args == ["batch-deployment", "delete", "-n", "d", "-e", "e"]
    # a command that prints a resource keeps it
    line = normalise(["online-endpoint", "show", "-n", "e", "-o", "none"], ROOT)
    assert line.args == ["online-endpoint", "show", "-n", "e", "-o", "none"]
    with pytest.raises(CliError, match="-o 'xml': not one of table, json"):
        normalise(["online-endpoint", "delete", "-n", "e", "-o", "xml"], ROOT)


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
