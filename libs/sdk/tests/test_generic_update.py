"""az's generic update arguments (`--set`, `--add`, `--remove`) on YAML fields."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.sdk.generic_update import Edit, GenericUpdateError, apply, parse_path


def edit(verb: str, *words: str) -> Edit:
    return Edit(verb, words)  # type: ignore[arg-type]


def test_paths() -> None:
    assert parse_path("a.b[0].c") == ["a", "b", 0, "c"]
    assert parse_path("items[-1]") == ["items", -1]
    for bad in ("", "a..b", "a[x]", "a]"):
        with pytest.raises(GenericUpdateError, match="not a field path"):
            parse_path(bad)


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        ([edit("set", "instance_count=2")], {"instance_count": 2}),
        ([edit("set", "tags.team=ml")], {"tags": {"team": "ml", "a": "1"}}),
        ([edit("set", "request_settings.max_queue_wait_ms=100")],
         {"request_settings": {"max_queue_wait_ms": 100}}),
        ([edit("set", "items[1]={\"x\": 1}")], {"items": ["a", {"x": 1}]}),
        ([edit("add", "tags", "team=ml", "env=dev")],
         {"tags": {"a": "1", "team": "ml", "env": "dev"}}),
        ([edit("add", "items", "c", "k=v", "j=w", "3")],
         {"items": ["a", "b", "c", {"k": "v", "j": "w"}, 3]}),
        ([edit("add", "new", "x")], {"new": ["x"]}),
        ([edit("remove", "tags.a")], {"tags": {}}),
        ([edit("remove", "items", "0")], {"items": ["b"]}),
        ([edit("remove", "tags")], {}),
        ([edit("set", "tags.b=2"), edit("remove", "tags.a")], {"tags": {"b": 2}}),
    ],
)  # fmt: skip
def test_edits_apply_as_az_does(edits: list[Edit], expected: dict[str, Any]) -> None:
    data: dict[str, Any] = {"tags": {"a": "1"}, "items": ["a", "b"]}
    apply(data, edits)
    for key, value in expected.items():
        assert data[key] == value
    if edits[0].words == ("tags",):
        assert "tags" not in data


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (edit("set", "novalue"), "use key=value"),
        (edit("set", "tags.a.b=1"), "'b' is inside the value '1', not a mapping"),
        (edit("set", "items[5]=x"), "index 5 does not exist"),
        (edit("add", "tags"), "give the list's path and what to add"),
        (edit("add", "tags", "x"), "tags is a mapping; add key=value pairs"),
        (edit("add", "count", "x"), "count is the value 3, not a list"),
        (edit("remove", "tags.missing"), "no field 'missing'"),
        (edit("remove", "items", "two"), "'two' is not a list index"),
        (edit("remove", "items", "9"), "index 9 does not exist"),
        (edit("remove", "a", "b", "c"), "give a field path"),
    ],
)  # fmt: skip
def test_bad_edits_are_clear_errors(bad: Edit, message: str) -> None:
    data: dict[str, Any] = {"tags": {"a": "1"}, "items": ["a", "b"], "count": 3}
    with pytest.raises(GenericUpdateError, match=message.replace("[", r"\[")) as caught:
        apply(data, [bad])
    assert str(caught.value).startswith(str(bad))
