"""az's generic update arguments (`--set`, `--add`, `--remove`) on a resource's YAML fields.

Azure's update commands take the resource as its YAML fields, apply these in the
order given, and validate the result like a YAML file (azure-cli
`commands/arm.py`):

- `--set a.b=value` sets a field, creating missing mappings on the way; `a[0]`
  indexes a list; the value is read as JSON/YAML (`2`, `true`, `null`,
  `{"x": 1}`) unless `--force-string`.
- `--add a.list item...` appends to a list (created if missing): consecutive
  `key=value` words make one mapping entry, any other word is one entry.
  az refuses `--add` on a mapping; Sluice merges `key=value` words into it, so
  `--add tags team=ml` does what it reads as.
- `--remove a.b` deletes a field (a mapping key); `--remove a.list 1` deletes the
  list's entry at that index.

Every mistake is a `SpecError` naming the argument and what is there instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml

Verb = Literal["set", "add", "remove"]
_PATH_PART = re.compile(r"\[(-?\d+)\]|([^.\[\]]+)")


class GenericUpdateError(ValueError):
    """A `--set/--add/--remove` argument that cannot be applied; nothing was changed."""


@dataclass(frozen=True)
class Edit:
    verb: Verb
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"--{self.verb} {' '.join(self.words)}"


def parse_path(text: str) -> list[str | int]:
    """`a.b[0].c` -> ["a", "b", 0, "c"]."""
    parts: list[str | int] = []
    consumed = 0
    for match in _PATH_PART.finditer(text):
        between = text[consumed : match.start()]
        if between not in ("", "."):
            break
        index, name = match.groups()
        parts.append(int(index) if index is not None else name)
        consumed = match.end()
    if not parts or consumed != len(text):
        raise GenericUpdateError(f"{text!r} is not a field path (e.g. tags.team or items[0])")
    return parts


def _value(text: str, force_string: bool) -> Any:
    if force_string:
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _describe(node: Any) -> str:
    if isinstance(node, dict):
        return f"a mapping with {sorted(node) or 'no fields'}"
    if isinstance(node, list):
        return f"a list of {len(node)}"
    return f"the value {node!r}"


def _child(node: Any, part: str | int, edit: Edit, *, create: bool) -> Any:
    if isinstance(part, int):
        if not isinstance(node, list):
            raise GenericUpdateError(f"{edit}: [{part}] indexes a list, found {_describe(node)}")
        if not -len(node) <= part < len(node):
            raise GenericUpdateError(
                f"{edit}: index {part} does not exist (the list has {len(node)})"
            )
        return node[part]
    if not isinstance(node, dict):
        raise GenericUpdateError(f"{edit}: {part!r} is inside {_describe(node)}, not a mapping")
    if part not in node or (create and node[part] is None):
        if not create:
            raise GenericUpdateError(f"{edit}: no field {part!r} (there is {_describe(node)})")
        node[part] = {}
    return node[part]


def _walk(data: dict[str, Any], path: list[str | int], edit: Edit, *, create: bool) -> Any:
    node: Any = data
    for part in path:
        node = _child(node, part, edit, create=create)
    return node


def _set(data: dict[str, Any], edit: Edit, force_string: bool) -> None:
    for word in edit.words:
        key, sep, text = word.partition("=")
        one = Edit("set", (word,))
        if not sep or not key:
            raise GenericUpdateError(f"{one}: use key=value, e.g. --set instance_count=2")
        *parents, last = parse_path(key)
        parent = _walk(data, parents, one, create=True)
        value = _value(text, force_string)
        if isinstance(last, int):
            _child(parent, last, one, create=False)
            parent[last] = value
        elif isinstance(parent, dict):
            parent[last] = value
        else:
            raise GenericUpdateError(
                f"{one}: {last!r} is inside {_describe(parent)}, not a mapping"
            )


def _add(data: dict[str, Any], edit: Edit, force_string: bool) -> None:
    if len(edit.words) < 2:
        raise GenericUpdateError(f"{edit}: give the list's path and what to add")
    *parents, last = parse_path(edit.words[0])
    parent = _walk(data, parents, edit, create=True)
    if isinstance(parent, dict) and parent.get(last) is None and isinstance(last, str):
        parent[last] = [] if not all("=" in w for w in edit.words[1:]) else {}
    target = _child(parent, last, edit, create=False)
    pairs = [w.partition("=") for w in edit.words[1:]]
    if isinstance(target, dict):
        if any(not sep or not key for key, sep, _ in pairs):
            raise GenericUpdateError(f"{edit}: {edit.words[0]} is a mapping; add key=value pairs")
        target.update({key: value for key, _, value in pairs})
        return
    if not isinstance(target, list):
        raise GenericUpdateError(f"{edit}: {edit.words[0]} is {_describe(target)}, not a list")
    entry: dict[str, str] = {}
    for word, (key, sep, value) in zip(edit.words[1:], pairs, strict=True):
        if sep and key:
            entry[key] = value  # consecutive key=value words make one mapping
            continue
        if entry:
            target.append(entry)
            entry = {}
        target.append(_value(word, force_string))
    if entry:
        target.append(entry)


def _remove(data: dict[str, Any], edit: Edit) -> None:
    if len(edit.words) not in (1, 2):
        raise GenericUpdateError(f"{edit}: give a field path, or a list's path and an index")
    path = parse_path(edit.words[0])
    if len(edit.words) == 2:
        try:
            path.append(int(edit.words[1]))
        except ValueError:
            raise GenericUpdateError(f"{edit}: {edit.words[1]!r} is not a list index") from None
    *parents, last = path
    parent = _walk(data, parents, edit, create=False)
    _child(parent, last, edit, create=False)  # it must exist
    del parent[last]


def apply(
    data: dict[str, Any], edits: Sequence[Edit], *, force_string: bool = False
) -> dict[str, Any]:
    """Apply `edits` in order to `data` (changed in place and returned)."""
    for edit in edits:
        if edit.verb == "set":
            _set(data, edit, force_string)
        elif edit.verb == "add":
            _add(data, edit, force_string)
        else:
            _remove(data, edit)
    return data
