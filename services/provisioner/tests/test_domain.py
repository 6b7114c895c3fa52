"""The planner, as a table: instances and what is wanted -> the next actions."""

from __future__ import annotations

import pytest

from sluice.provisioner.domain import (
    Adopt,
    Desired,
    Drain,
    Found,
    Observed,
    Start,
    Stop,
    adoption,
    plan,
)


def inst(
    id: str,
    version: int = 1,
    *,
    state: str = "routed",
    started: float | None = None,
    reason: str = "",
) -> Observed:
    """`state`: starting, ready (not routed yet), routed, draining, or unrouted (drained)."""
    flags = {
        "starting": {},
        "ready": {"ready": True},
        "routed": {"ready": True, "routed": True},
        "draining": {"ready": True, "draining": True},
        "unrouted": {"ready": True, "draining": True, "unrouted": True},
    }[state]
    return Observed(
        id=id,
        version=version,
        started=started if started is not None else float(ord(id[-1])),
        drain_reason=reason,
        **flags,  # type: ignore[arg-type]
    )


V2 = Desired(version=2, count=1)
V2x2 = Desired(version=2, count=2)

CASES = [
    # ---- a new deployment and scaling -------------------------------------------------------
    ("first start", Desired(1, 2), [], [Start(1), Start(1)]),
    (
        "all started: wait",
        Desired(1, 2),
        [inst("a", state="starting"), inst("b", state="starting")],
        [],
    ),
    ("scale out", Desired(1, 3), [inst("a"), inst("b")], [Start(1)]),
    (
        "scale in drains the least useful: a starting one before a serving one",
        Desired(1, 1),
        [inst("a"), inst("b", state="starting")],
        [Drain("b", "scaled in")],
    ),
    (
        "scale in drains the oldest",
        Desired(1, 1),
        [inst("a"), inst("b")],
        [Drain("a", "scaled in")],
    ),
    (
        "a draining instance still routed is waited for",
        Desired(1, 1),
        [inst("a", state="draining", reason="scaled in"), inst("b")],
        [],
    ),
    (
        "an instance the gateway dropped is stopped with its reason",
        Desired(1, 1),
        [inst("a", state="unrouted", reason="scaled in"), inst("b")],
        [Stop("a", "scaled in")],
    ),
    (
        "a draining instance is replaced at once (it is not serving)",
        Desired(1, 2),
        [inst("a", state="draining", reason="failed liveness 3 times"), inst("b")],
        [Start(1)],
    ),
    # ---- rolling one instance ------------------------------------------------------------------
    ("roll: surge one", V2, [inst("a")], [Start(2)]),
    ("roll: new one starting, old serves", V2, [inst("a"), inst("n", 2, state="starting")], []),
    (
        "roll: new one ready but not routed yet: the old one stays",
        V2,
        [inst("a"), inst("n", 2, state="ready")],
        [],
    ),
    (
        "roll: new one routed: the old one drains",
        V2,
        [inst("a"), inst("n", 2)],
        [Drain("a", "replaced by a newer version")],
    ),
    (
        "roll: old one drained from the gateway: stopped",
        V2,
        [inst("a", state="unrouted", reason="replaced by a newer version"), inst("n", 2)],
        [Stop("a", "replaced by a newer version")],
    ),
    # ---- rolling two instances ------------------------------------------------------------------
    ("roll x2: surge one", V2x2, [inst("a"), inst("b")], [Start(2)]),
    (
        "roll x2: first new routed: oldest drains, second new starts",
        V2x2,
        [inst("a"), inst("b"), inst("m", 2)],
        [Start(2), Drain("a", "replaced by a newer version")],
    ),
    (
        "roll x2: second new starting, one old serving, one draining",
        V2x2,
        [inst("a", state="draining"), inst("b"), inst("m", 2), inst("n", 2, state="starting")],
        [],
    ),
    (
        "roll x2: both new routed: the last old one drains",
        V2x2,
        [inst("b"), inst("m", 2), inst("n", 2)],
        [Drain("b", "replaced by a newer version")],
    ),
    (
        "roll x2: an old instance that never got ready leaves first",
        V2x2,
        [inst("a"), inst("b", state="starting"), inst("m", 2)],
        [Start(2), Drain("b", "replaced by a newer version")],
    ),
    # ---- a version that cannot run ---------------------------------------------------------------
    (
        "failed version: nothing starts, the old ones keep serving",
        Desired(2, 1, runnable=False),
        [inst("a")],
        [],
    ),
    (
        "failed version with a scale-in: the old ones still follow the count",
        Desired(2, 1, runnable=False),
        [inst("a"), inst("b")],
        [Drain("a", "replaced by a newer version")],
    ),
    # ---- deleted ------------------------------------------------------------------------------
    (
        "deleted: everything drains",
        None,
        [inst("a"), inst("b", 2, state="starting")],
        [Drain("a", "deployment deleted"), Drain("b", "deployment deleted")],
    ),
    (
        "deleted: drained ones stop, the others wait for the gateway",
        None,
        [inst("a", state="unrouted", reason="deployment deleted"), inst("b", state="draining")],
        [Stop("a", "deployment deleted")],
    ),
    ("deleted and gone", None, [], []),
    # ---- after a provisioner restart: the adopted instances (see ADOPTION below) -------------
    (
        "adopted, current version, routed: nothing stops, nothing starts",
        Desired(1, 2),
        [inst("a"), inst("b")],
        [],
    ),
    (
        "adopted, one of two died while the provisioner was down: one starts",
        Desired(1, 2),
        [inst("a")],
        [Start(1)],
    ),
    (
        "adopted, an older version (updated while the provisioner was down): rolled, make "
        "before break",
        V2,
        [inst("a", 1)],
        [Start(2)],
    ),
    (
        "adopted sick (drained at adoption): a replacement starts, it stops once unrouted",
        Desired(1, 2),
        [
            inst("a", state="draining", reason="not ready after the provisioner restarted"),
            inst("b"),
        ],
        [Start(1)],
    ),
    (
        "adopted while it was leaving: stopped once the gateway drops it",
        Desired(1, 1),
        [
            inst("a", state="unrouted", reason="was leaving when the provisioner restarted"),
            inst("b"),
        ],
        [Stop("a", "was leaving when the provisioner restarted")],
    ),
    (
        "adopted, more than wanted (scaled in while the provisioner was down)",
        Desired(1, 1),
        [inst("a"), inst("b")],
        [Drain("a", "scaled in")],
    ),
    (
        "adopted, the deployment was deleted while the provisioner was down",
        None,
        [inst("a")],
        [Drain("a", "deployment deleted")],
    ),
]

# A live instance a dead provisioner left (its pid and start time as recorded) -> how it is
# taken over. Processes that are gone, or whose pid now belongs to another process, never
# get here: their records are closed and nothing is signalled.
ADOPTION = [
    ("listed and answering: adopted serving", Found(True, True, True), Adopt(ready=True)),
    (
        "listed, was starting, answers now: adopted ready",
        Found(listed=True, was_ready=False, answers=True),
        Adopt(ready=True),
    ),
    (
        "listed, still starting: adopted starting (its readiness deadline runs on)",
        Found(listed=True, was_ready=False, answers=False),
        Adopt(ready=False),
    ),
    (
        "listed ready but not answering: adopted out of routing, replaced",
        Found(listed=True, was_ready=True, answers=False),
        Adopt(False, "not ready after the provisioner restarted"),
    ),
    (
        "not listed (it was draining): adopted draining, stopped once unrouted",
        Found(listed=False, was_ready=False, answers=True),
        Adopt(True, "was leaving when the provisioner restarted"),
    ),
]


@pytest.mark.parametrize(
    ("found", "expected"), [c[1:] for c in ADOPTION], ids=[c[0] for c in ADOPTION]
)
def test_adoption(found: Found, expected: Adopt) -> None:
    assert adoption(found) == expected


@pytest.mark.parametrize(
    ("desired", "observed", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_plan(desired: Desired | None, observed: list[Observed], expected: list[object]) -> None:
    assert plan(desired, observed) == expected


def test_plan_never_drains_below_the_count_while_new_instances_are_unrouted() -> None:
    """Make before break, over every mix of old/new and ready/routed for two instances."""
    states = ["starting", "ready", "routed"]
    for old_count in range(3):
        for new_states in [[], *([s] for s in states), *([a, b] for a in states for b in states)]:
            old = [inst(f"o{i}", 1, started=i) for i in range(old_count)]
            new = [inst(f"n{i}", 2, state=s, started=10 + i) for i, s in enumerate(new_states)]
            actions = plan(V2x2, old + new)
            drained = {a.instance for a in actions if isinstance(a, Drain)}
            routed_after = [i for i in old + new if i.routed and i.id not in drained]
            assert len(routed_after) >= min(2, old_count + sum(s == "routed" for s in new_states))
