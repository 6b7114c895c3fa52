"""Azure CLI spellings on the way in: `az ml ...`, `sluice ml ...`, az's global arguments.

`normalise` rewrites one command line before Typer parses it:

- `az ml <group> ...` (the forwarder `sluice shim az` installs) and
  `sluice ml <group> ...` become `sluice <group> ...`, and `az monitor autoscale
  ...` becomes `sluice monitor autoscale ...`; az's own set-up commands
  (`az extension add`, `az configure --defaults`, `az config set`, `az account
  set`, `az login`) do nothing here and say so; `az --version` says what this `az`
  is, `az config get` answers as an az with nothing configured, `az account
  get-access-token` gives the Sluice token this CLI sends and `az account show` the
  subscription id Sluice's resource ids use; any other `az`
  command is refused by name;
- az's global arguments that name Azure context (`--subscription`,
  `--resource-group/-g`, `--workspace-name/-w`) or tune its logging are dropped;
- `--query EXPR` is taken off and returned (render applies it);
- `--set`, `--add` and `--remove` take several words as in az (`--set a=1 b=2`,
  `--add tags team=ml`, `--remove items 0`): `--set` becomes one `--set` per
  word, `--add`/`--remove` one option whose value is the words as a JSON list;
- a long option may be shortened to any prefix of one option alone, as az's
  argparse allows (`--endpoint` is `--endpoint-name`, `--deployment`
  `--deployment-name`, `--f` `--file`); a prefix of several is an error naming
  them; `--no-wait`/`--yes`/`-y` are dropped from commands that do not take them
  (they have nothing to wait for or confirm);
- `-o/--output FORMAT` is dropped from commands that do not take it (they print
  no resource; what they do print, such as `delete`'s message on stderr, is
  unchanged), so `az ml ... delete -o none` runs as in az
  scripts; the format must still be one az knows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import OutputFormat

GLOBAL_WITH_VALUE = frozenset(
    {"--subscription", "--resource-group", "-g", "--workspace-name", "-w"}
)
GLOBAL_FLAGS = frozenset({"--only-show-errors", "--debug", "--verbose"})
OPTIONAL_FLAGS = frozenset({"--no-wait", "--yes", "-y"})
OUTPUT = frozenset({"-o", "--output"})
MULTI_WORD = frozenset({"--set", "--add", "--remove", "--tags"})
AZ_SETUP = frozenset({"extension", "configure", "config", "account", "login", "version"})


class AzSetupCommand(Exception):
    """An `az` set-up command with no meaning for Sluice; the message says so."""


class AzReply(Exception):
    """An `az` command the forwarder answers itself; the message is its standard output."""


def _version() -> str:
    """`az --version`: scripts run it to see that az is there; this one is not Azure's."""
    return (
        f"sluice-sdk {metadata.version('sluice-sdk')}\n\n"
        "This `az` is Sluice's forwarder (`sluice shim az`), not the Azure CLI: it runs "
        "`az ml` and `az monitor autoscale` commands against Sluice."
    )


@dataclass(frozen=True)
class CommandLine:
    args: list[str]
    query: str | None


def _az(args: list[str], groups: Sequence[str]) -> list[str]:
    if args[:1] == ["ml"]:
        return args[1:]
    if args[:1] == ["--version"]:
        raise AzReply(_version())
    if args[:2] == ["config", "get"]:
        return ["shim", "az-config-get", *args[2:]]
    if args[:2] == ["account", "get-access-token"]:
        return ["shim", "az-access-token", *args[2:]]
    if args[:2] == ["account", "show"]:
        return ["shim", "az-account-show", *args[2:]]
    if args[:2] == ["monitor", "autoscale"]:
        return args  # `sluice monitor autoscale ...` takes az's flags
    if args[:1] == ["monitor"]:
        raise CliError(
            f"`az monitor {args[1] if len(args) > 1 else ''}` is not supported by Sluice's az "
            "forwarder: of `az monitor` it runs `autoscale` (metrics: `sluice online-endpoint "
            "metrics`)"
        )
    words = " ".join(args[:2]) or "(nothing)"
    if args and args[0] in AZ_SETUP:
        raise AzSetupCommand(f"az {words}: nothing to do for Sluice (Azure set-up command)")
    raise CliError(
        f"`az {words}` is not supported by Sluice's az forwarder: it runs `az ml` commands "
        f"({', '.join(g for g in groups if g != 'monitor')}) and `az monitor autoscale`"
    )


class CommandGroup(Protocol):
    """What is read of the command tree (Typer's group; its context is not needed)."""

    def list_commands(self, ctx: Any) -> list[str]: ...

    def get_command(self, ctx: Any, cmd_name: str) -> Any: ...


def _options(args: Sequence[str], root: CommandGroup) -> set[str]:
    """The option names of the (sub)command `args` names ({} if it does not exist)."""
    node: Any = root
    for word in args:
        if not hasattr(node, "get_command") or word.startswith("-"):
            break
        node = node.get_command(None, word)
    params = getattr(node, "params", [])
    return {name for p in params for name in (*p.opts, *getattr(p, "secondary_opts", ()))}


# What az's parser knows besides the command's own options: its global arguments.
AZ_LONG = frozenset(
    name
    for name in (*GLOBAL_WITH_VALUE, *GLOBAL_FLAGS, *OPTIONAL_FLAGS, *OUTPUT, "--query")
    if name.startswith("--")
)


def _expanded(name: str, options: set[str]) -> str:
    """`name` as argparse reads a long option: itself if it is an option, else the one
    option it is a prefix of (several: an error naming them, as argparse's); unknown
    names are left for the command's parser to refuse."""
    if not name.startswith("--") or name == "--" or name in options or name in AZ_LONG:
        return name
    matches = sorted(o for o in options | AZ_LONG if o.startswith("--") and o.startswith(name))
    if len(matches) > 1:
        raise CliError(f"ambiguous option: {name} could match {', '.join(matches)}")
    return matches[0] if matches else name


def _words(first: str, rest: list[str]) -> Iterator[str]:
    """The words an az `nargs='+'` option takes: up to the next option."""
    yield first
    while rest and not rest[0].startswith("-"):
        yield rest.pop(0)


def _multi_word(option: str, words: list[str]) -> list[str]:
    if option in ("--set", "--tags"):  # one key=value per option, as Sluice's repeat them
        return [part for word in words for part in (option, word)]
    return [option, json.dumps(words)]


def normalise(argv: Sequence[str], root: CommandGroup) -> CommandLine:
    args = list(argv)
    groups = sorted(
        name
        for name in root.list_commands(None)
        if hasattr(root.get_command(None, name), "get_command")
    )
    via_azure = bool(args) and args[0] in ("az", "ml")
    if args[:1] == ["az"]:
        args = _az(args[1:], groups)
    elif args[:1] == ["ml"]:
        args = args[1:]
    if via_azure and args and not args[0].startswith("-") and args[0] not in groups:
        raise CliError(
            f"`az ml {args[0]}` is not supported by Sluice (supported: {', '.join(groups)})"
        )
    options = _options(args, root)
    out: list[str] = []
    query: str | None = None
    rest = list(args)
    while rest:
        name, eq, value = rest.pop(0).partition("=")
        name = _expanded(name, options)
        word = name + eq + value
        if word in MULTI_WORD and word in options and rest:
            out += _multi_word(word, list(_words(rest.pop(0), rest)))
        elif name == "--query":
            query = value if eq else (rest.pop(0) if rest else "")
        elif name in GLOBAL_WITH_VALUE:
            if not eq and rest:
                rest.pop(0)
        elif word in GLOBAL_FLAGS or (word in OPTIONAL_FLAGS and word not in options):
            continue
        elif name in OUTPUT and name not in options:
            fmt = value if eq else (rest.pop(0) if rest else "")
            if fmt not in {f.value for f in OutputFormat}:
                raise CliError(
                    f"{name} {fmt!r}: not one of {', '.join(f.value for f in OutputFormat)}"
                )
        else:
            out.append(word)
    return CommandLine(out, query)
