"""The latency sketch answers every quantile within its stated relative error, merges by
adding bins, and stays small."""

from __future__ import annotations

import random

from sluice.metrics import sketch


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def add(bins: dict[str, int], values: list[float]) -> None:
    for v in values:
        k = sketch.key_of(v)
        bins[k] = bins.get(k, 0) + 1


def test_quantiles_within_the_relative_accuracy() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1) for _ in range(20_000)]  # ~20 ms, long tail
    bins: dict[str, int] = {}
    add(bins, values)
    qs = (0.5, 0.9, 0.95, 0.99)
    for q, got in zip(qs, sketch.quantiles(bins, qs), strict=True):
        want = exact(values, q)
        assert got is not None
        assert abs(got - want) <= sketch.RELATIVE_ACCURACY * want, (q, got, want)
    assert len(bins) < 1000  # memory grows with log(range), not with the count


def test_merging_two_sketches_is_the_sketch_of_both() -> None:
    a, b = [float(i) for i in range(1, 500)], [float(i) * 3 for i in range(1, 300)]
    left: dict[str, int] = {}
    right: dict[str, int] = {}
    both: dict[str, int] = {}
    add(left, a)
    add(right, b)
    add(both, a + b)
    sketch.merge(left, right)
    assert left == both


def test_zero_latency_and_empty_sketch() -> None:
    assert sketch.quantiles({}, (0.5,)) == [None]
    assert sketch.quantiles({sketch.key_of(0.0): 3}, (0.5,)) == [0.0]
