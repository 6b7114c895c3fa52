"""NACK isolation as tables: desired states, Envoy's verdicts -> what is published next.

States are strings like "a2" (endpoint a at version 2); GATEWAY is one more key.
A fake Envoy rejects every configuration that contains one of the bad states.
"""

from __future__ import annotations

import pytest

from sluice.traffic.isolation import GATEWAY, NackIsolation


def converge(
    isolation: NackIsolation[str], desired: dict[str, str], bad: set[str], pushes: int = 20
) -> tuple[dict[str, str], list[list[str]], int]:
    """Publish until Envoy accepts the chosen configuration and nothing is held back.
    Returns the final configuration, the suspects of each NACK, and the pushes it took."""
    suspects_seen = []
    for push in range(1, pushes + 1):
        chosen = isolation.choose(desired)
        if bad & set(chosen.values()):
            suspects_seen.append(isolation.on_nack(chosen))
            continue
        released = isolation.on_ack(chosen)
        if not released:
            return chosen, suspects_seen, push
    raise AssertionError(f"no stable configuration after {pushes} pushes")


ALL_GOOD = {GATEWAY: "g1", "a": "a1", "b": "b1", "c": "c1", "d": "d1"}

CASES = [
    # (name, change from ALL_GOOD, bad states, expected final, suspects per NACK)
    ("no change", {}, set(), ALL_GOOD, []),
    ("one good change", {"a": "a2"}, set(), {**ALL_GOOD, "a": "a2"}, []),
    (
        "one bad change: rejected at once, it keeps its last accepted state",
        {"a": "a2"},
        {"a2"},
        ALL_GOOD,
        [["a"]],
    ),
    (
        "two changes, the second bad: halves, then the culprit alone",
        {"a": "a2", "b": "b2"},
        {"b2"},
        {**ALL_GOOD, "a": "a2"},
        [["a", "b"], ["b"]],
    ),
    (
        "two changes, the first bad",
        {"a": "a2", "b": "b2"},
        {"a2"},
        {**ALL_GOOD, "b": "b2"},
        [["a", "b"], ["a"]],
    ),
    (
        "four changes, the last bad: every good one goes live",
        {"a": "a2", "b": "b2", "c": "c2", "d": "d2"},
        {"d2"},
        {**ALL_GOOD, "a": "a2", "b": "b2", "c": "c2"},
        [["a", "b", "c", "d"], ["c", "d"], ["d"]],
    ),
    (
        "four changes, two bad in different halves",
        {"a": "a2", "b": "b2", "c": "c2", "d": "d2"},
        {"a2", "d2"},
        {**ALL_GOOD, "b": "b2", "c": "c2"},
        # b was held with c and d when a was found; released together, they are searched again.
        [["a", "b", "c", "d"], ["a", "b"], ["a"], ["b", "c", "d"], ["c", "d"], ["d"]],
    ),
    (
        "a bad gateway setting among endpoint changes",
        {GATEWAY: "g2", "a": "a2"},
        {"g2"},
        {**ALL_GOOD, "a": "a2"},
        [[GATEWAY, "a"], [GATEWAY]],
    ),
]


@pytest.mark.parametrize(
    ("change", "bad", "final", "suspects"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_isolation(
    change: dict[str, str], bad: set[str], final: dict[str, str], suspects: list[list[str]]
) -> None:
    isolation: NackIsolation[str] = NackIsolation()
    assert isolation.on_ack(ALL_GOOD) is False
    chosen, seen, _ = converge(isolation, {**ALL_GOOD, **change}, bad)
    assert chosen == final
    assert seen == suspects


def test_a_rejected_state_is_not_retried_until_it_changes() -> None:
    isolation: NackIsolation[str] = NackIsolation()
    isolation.on_ack({"a": "a1"})
    assert isolation.on_nack({"a": "a2"}) == ["a"]
    assert isolation.choose({"a": "a2"}) == {"a": "a1"}  # the same bad state: not again
    assert isolation.choose({"a": "a3"}) == {"a": "a3"}  # a fix: tried


def test_a_new_endpoint_that_is_rejected_is_left_out() -> None:
    isolation: NackIsolation[str] = NackIsolation()
    isolation.on_ack({"a": "a1"})
    assert isolation.on_nack({"a": "a1", "new": "new1"}) == ["new"]
    assert isolation.choose({"a": "a1", "new": "new1"}) == {"a": "a1"}


def test_held_suspects_are_released_by_the_next_ack() -> None:
    isolation: NackIsolation[str] = NackIsolation()
    isolation.on_ack({"a": "a1", "b": "b1"})
    isolation.on_nack({"a": "a2", "b": "b2"})
    assert isolation.held == {"b"}
    assert isolation.choose({"a": "a2", "b": "b2"}) == {"a": "a2", "b": "b1"}
    assert isolation.on_ack({"a": "a2", "b": "b1"}) is True
    assert isolation.held == frozenset()
    assert isolation.choose({"a": "a2", "b": "b2"}) == {"a": "a2", "b": "b2"}


def test_eight_suspects_one_bad_take_a_few_pushes() -> None:
    isolation: NackIsolation[str] = NackIsolation()
    names = [f"e{i}" for i in range(8)]
    isolation.on_ack({n: f"{n}@1" for n in names})
    chosen, seen, pushes = converge(isolation, {n: f"{n}@2" for n in names}, {"e5@2"})
    assert chosen == {n: f"{n}@{1 if n == 'e5' else 2}" for n in names}
    assert seen[-1] == ["e5"]
    assert pushes <= 10  # 8 suspects: a few halvings, not one push per suspect
