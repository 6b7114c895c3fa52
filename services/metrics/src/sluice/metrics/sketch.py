"""Latency quantiles from a DDSketch whose bins are a plain `{key: count}` map.

DDSketch maps a value v > 0 to the integer key ceil(log_gamma(v)); every value in
a bin is within `RELATIVE_ACCURACY` of the bin's representative value, so any
quantile is answered within that relative error, with memory that grows with the
logarithm of the value range, not the number of values. Keeping the bins as a map
is what makes the sketch storable with MongoDB `$inc` (one field per bin) and
mergeable by adding counts: a minute's sketch, an hour's, two deployments'.
The key/value mapping is `ddsketch`'s own LogarithmicMapping.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from ddsketch.mapping import LogarithmicMapping

RELATIVE_ACCURACY = 0.01  # each quantile is within 1% of the true value
ZERO_KEY = "z"  # values <= MIN_VALUE (0 ms latency) are counted here
MIN_VALUE = 1e-3  # 1 microsecond, in milliseconds

_MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
# LogarithmicMapping.key(v) = ceil(log(v) * multiplier) + offset, inlined below: this runs
# once per access-log entry (tests/test_sketch.py checks it against the library's).
_MULTIPLIER = 1 / math.log(_MAPPING.gamma)
_OFFSET = int(_MAPPING._offset)
_KEYS: dict[int, str] = {}


def key_of(value_ms: float) -> str:
    """The bin (as a Mongo field name) of one latency in milliseconds."""
    if value_ms <= MIN_VALUE:
        return ZERO_KEY
    k = math.ceil(math.log(value_ms) * _MULTIPLIER) + _OFFSET
    text = _KEYS.get(k)
    if text is None:
        text = _KEYS[k] = str(k)
    return text


def merge(into: dict[str, int], bins: Mapping[str, int]) -> None:
    for k, n in bins.items():
        into[k] = into.get(k, 0) + int(n)


def quantiles(bins: Mapping[str, int], qs: Iterable[float]) -> list[float | None]:
    """The values at quantiles `qs` (0..1) of the sketch, None when it is empty.

    Same rank rule as DDSketch.get_quantile_value: the first bin whose cumulative
    count exceeds q x (count - 1).
    """
    zero = int(bins.get(ZERO_KEY, 0))
    ordered = sorted((int(k), int(n)) for k, n in bins.items() if k != ZERO_KEY and n)
    total = zero + sum(n for _, n in ordered)
    if total == 0:
        return [None for _ in qs]
    result: list[float | None] = []
    for q in qs:
        rank = q * (total - 1)
        if rank < zero:
            result.append(0.0)
            continue
        seen = zero
        value = 0.0
        for k, n in ordered:
            seen += n
            if seen > rank:
                value = _MAPPING.value(k)
                break
        result.append(value)
    return result
