"""az's autoscale condition grammar: `"CpuUtilizationPercentage > 70 avg 5m"`.

`METRIC OPERATOR THRESHOLD AGGREGATION WINDOW`, as `az monitor autoscale rule create
--condition` takes it (an optional quoted metric namespace may come first). The window
is `##d##h##m##s` or ISO 8601 (`PT5M`). Dimension filters (`where ...`) are refused:
Sluice's metrics have no dimensions a rule could filter on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPERATORS = ("==", "!=", ">=", "<=", ">", "<")
AGGREGATIONS = ("avg", "min", "max", "total", "count")
GRAIN_STATISTICS = ("avg", "min", "max", "sum")
_CONDITION = re.compile(
    r"""^\s*(?:"[^"]*"\s+)?                 # optional metric namespace
    (?P<metric>[^<>=!\s][^<>=!]*?)\s*
    (?P<op>==|!=|>=|<=|>|<)\s*
    (?P<threshold>[-+]?\d+(?:\.\d+)?)\s+
    (?P<agg>[A-Za-z]+)\s+
    (?P<window>\S+)
    (?P<rest>\s+.*)?\s*$""",
    re.VERBOSE,
)
_DHMS = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$", re.IGNORECASE)
_ISO = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$", re.IGNORECASE)


class ConditionError(ValueError):
    """A condition or duration that does not parse; the message says what is expected."""


@dataclass(frozen=True)
class Condition:
    metric: str
    operator: str
    threshold: float
    aggregation: str
    window_s: int


def parse_period(text: str, what: str = "window") -> int:
    """Seconds in `5m`, `1h30m`, `90s`, `1d` or ISO 8601 (`PT5M`)."""
    value = text.strip()
    for pattern in (_DHMS, _ISO):
        m = pattern.match(value)
        if m and any(m.groups()):
            d, h, mi, s = (int(g or 0) for g in m.groups())
            return d * 86400 + h * 3600 + mi * 60 + s
    raise ConditionError(f"{what} {text!r} is not a period such as 5m, 1h30m, 90s or PT5M")


def parse_condition(text: str) -> Condition:
    """`"CpuUtilizationPercentage > 70 avg 5m"` -> Condition; ConditionError naming the fault."""
    m = _CONDITION.match(text)
    if m is None:
        raise ConditionError(
            f"condition {text!r} does not read as METRIC OPERATOR THRESHOLD AGGREGATION WINDOW, "
            f'e.g. "CpuUtilizationPercentage > 70 avg 5m" (operators {" ".join(OPERATORS)})'
        )
    if m.group("rest"):
        rest = m.group("rest").strip()
        if rest.lower().startswith("where"):
            raise ConditionError(
                f"condition {text!r}: dimension filters ({rest!r}) are not supported"
            )
        raise ConditionError(f"condition {text!r}: unexpected {rest!r} after the window")
    agg = m.group("agg").lower()
    if agg not in AGGREGATIONS:
        raise ConditionError(
            f"condition {text!r}: aggregation {m.group('agg')!r} is not one of "
            f"{', '.join(AGGREGATIONS)}"
        )
    return Condition(
        metric=m.group("metric"),
        operator=m.group("op"),
        threshold=float(m.group("threshold")),
        aggregation=agg,
        window_s=parse_period(m.group("window")),
    )


def parse_time_grain(text: str) -> tuple[str, int]:
    """az's `--timegrain "avg 1m"` -> ("avg", 60)."""
    parts = text.split()
    if len(parts) != 2 or parts[0].lower() not in GRAIN_STATISTICS:
        raise ConditionError(
            f"time grain {text!r} is not '<statistic> <period>' with statistic one of "
            f"{', '.join(GRAIN_STATISTICS)} (e.g. 'avg 1m')"
        )
    return parts[0].lower(), parse_period(parts[1], "time grain")


def format_condition(metric: str, operator: str, threshold: float, agg: str, window_s: int) -> str:
    """The inverse of parse_condition (windows in the largest exact unit)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if window_s and window_s % size == 0:
            return f"{metric} {operator} {threshold:g} {agg} {window_s // size}{unit}"
    return f"{metric} {operator} {threshold:g} {agg} {window_s}s"
