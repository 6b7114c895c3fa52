"""The recent-requests buffer: bounded per endpoint and in endpoints, mirrored copies left
out, filters by deployment, status class or code and age; entries converted for the API."""

from __future__ import annotations

import time
from typing import Any

import pytest

from sluice.common import access_log as f
from sluice.metrics.requestlog import RecentRequests, entry_message, status_filter


def entry(
    endpoint: str, deployment: str, status: int, at: float, *, mirror: bool = False
) -> list[Any]:
    """A `[time, record]` entry as Envoy's fluentd access logger sends it."""
    entry = f.Entry(
        endpoint=endpoint,
        deployment=deployment,
        start_ms=int(at * 1000),
        duration_us=2500,
        status=status,
        flags="UH" if status == 503 else "",
        request_header_bytes=100,
        request_body_bytes=20,
        response_header_bytes=80,
        response_body_bytes=10,
        method="POST",
        upstream="127.0.0.1:5001",
        path="/score",
        request_id=f"id-{status}-{at}",
        mirror=mirror,
    )
    return [int(at), f.render(entry)]


def test_filters_and_bounds() -> None:
    now = time.time()
    recent = RecentRequests(per_endpoint=5, max_endpoints=2)
    recent.add(
        [
            entry("shop", "blue", 200, now - 700),
            entry("shop", "blue", 200, now - 10),
            entry("shop", "green", 503, now - 5),
            entry("shop", "green", 404, now - 4),
            entry("shop", "shadow", 200, now - 3, mirror=True),  # a copy: not a client's request
            entry("", "", 404, now),  # no endpoint: the catch-all 404
        ]
    )
    _, matched, kept = recent.query("shop")
    assert kept == 4 and matched == 4
    assert recent.query("shop", deployment="green")[1] == 2
    assert [e.status for e in recent.query("shop", status="5xx")[0]] == [503]
    assert recent.query("shop", status="404")[1] == 1
    assert recent.query("shop", since_s=600, now=now)[1] == 3
    assert [e.request_id for e in recent.query("shop", limit=1)[0]] == [f"id-404-{now - 4}"]
    # Bounded: the oldest entries go, then the least recently logged endpoint.
    recent.add([entry("shop", "blue", 200, now) for _ in range(10)])
    assert recent.query("shop")[2] == 5
    recent.add([entry("a", "x", 200, now), entry("b", "x", 200, now)])
    assert recent.query("shop")[2] == 0 and recent.query("b")[2] == 1


def test_an_entry_as_the_api_returns_it() -> None:
    message = entry_message(f.parse(entry("shop", "green", 503, 1_800_000_000.25)[1]))
    assert (message.endpoint_name, message.deployment_name) == ("shop", "green")
    assert (message.method, message.path, message.status) == ("POST", "/score", 503)
    assert message.duration_ms == pytest.approx(2.5)
    assert message.upstream == "127.0.0.1:5001"
    assert message.response_flags == "no_healthy_upstream"
    assert (message.bytes_in, message.bytes_out) == (120, 90)
    assert message.time.ToMilliseconds() == 1_800_000_000_250


@pytest.mark.parametrize("bad", ["6xx", "5x", "abc", "99", "600"])
def test_a_bad_status_filter_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="status must be"):
        status_filter(bad)
