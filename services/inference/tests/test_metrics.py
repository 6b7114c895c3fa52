"""The server's fast metric updates write what prometheus_client's own calls would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from sluice.inference.metrics import LATENCY_BUCKETS, Metrics

# Below, on and between bucket bounds, and past the last one (the +Inf bucket).
DURATIONS = [0.0, 0.0001, 0.0005, 0.00051, 0.003, 0.025, 1.0, 29.9, 30.0, 31.0, 1e6]


def exposition(metrics: Metrics, registry: CollectorRegistry) -> str:
    return "\n".join(
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith(("sluice_inference_run_duration", "sluice_inference_request_duration"))
        and "_created" not in line  # when each registry was made
    )


def test_fast_observers_match_prometheus_client_observe() -> None:
    fast_registry, slow_registry = CollectorRegistry(), CollectorRegistry()
    fast, slow = Metrics(fast_registry, ("shop", "blue")), Metrics(slow_registry, ("shop", "blue"))
    for seconds in DURATIONS:
        fast.observe_run(seconds)
        slow.run_latency.observe(seconds)
        fast.observe("/score", 200, seconds)
        slow.latency.labels("shop", "blue", "/score").observe(seconds)
    expected = exposition(slow, slow_registry)
    assert f'le="{LATENCY_BUCKETS[0]}"' in expected and 'le="+Inf"' in expected
    assert exposition(fast, fast_registry) == expected


def test_in_flight_gauge_reads_the_count_when_scraped() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, ("shop", "blue"))
    count = 0
    assert metrics.track_in_flight(lambda: count) is None  # one process: nothing to push
    count = 3
    scraped = generate_latest(registry).decode()
    assert 'sluice_inference_requests_in_flight{deployment="blue",endpoint="shop"} 3.0' in scraped
