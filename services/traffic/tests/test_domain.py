"""The routing rules as plain values: shares, mirror, limits, host conflicts, event hints."""

from __future__ import annotations

import pytest

from sluice.traffic.domain import (
    Deployment,
    Endpoint,
    KeyAuth,
    Share,
    Upstream,
    live_shares,
    mirror_share,
    without_host_conflicts,
)
from sluice.traffic.events import Mentions, endpoint_of
from sluice.traffic.xds import resources as r
from sluice.traffic.xds.snapshot import CLUSTER, ENDPOINT, ROUTE, InconsistentSnapshot, Snapshot


def dep(name: str, instances: int = 1, concurrency: int = 1, timeout: int = 5000) -> Deployment:
    ups = tuple(Upstream("127.0.0.1", 5000 + i) for i in range(instances))
    return Deployment("ep", name, 1, timeout, concurrency, ups)


def endpoint(name: str, traffic: tuple[Share, ...] = (), *deps: Deployment) -> Endpoint:
    return Endpoint(name, 1, KeyAuth(("k",)), traffic, None, deps)


def test_live_shares_skip_zero_and_unknown_deployments() -> None:
    shares = live_shares({"green": 10, "blue": 90, "gone": 5, "idle": 0}, {"blue", "green", "idle"})
    assert shares == (Share("blue", 90), Share("green", 10))


def test_mirror_is_one_deployment_at_most_half_and_never_a_live_one() -> None:
    live = (Share("blue", 100),)
    assert mirror_share({"green": 10}, {"blue", "green"}, live) == Share("green", 10)
    assert mirror_share({"green": 80}, {"blue", "green"}, live) == Share("green", 50)
    assert mirror_share({"blue": 10}, {"blue", "green"}, live) is None
    assert mirror_share({"gone": 10}, {"blue"}, live) is None


def test_in_flight_limit_follows_azure() -> None:
    assert dep("a", instances=3, concurrency=2).max_in_flight == 12
    assert dep("a", instances=0).max_in_flight == 1  # no instance: 503 before any limit


def test_split_timeout_is_the_longest_of_the_split() -> None:
    ep = endpoint(
        "ep",
        (Share("a", 50), Share("b", 50)),
        dep("a", timeout=1000),
        dep("b", timeout=3000),
        dep("c", timeout=9000),
    )
    assert ep.split_timeout_ms() == 3000


def test_hosts_differing_only_in_case_keep_the_first() -> None:
    kept, conflicts = without_host_conflicts([endpoint("shop"), endpoint("Shop"), endpoint("x")])
    assert sorted(e.name for e in kept) == ["Shop", "x"]
    assert [(c.endpoint, c.taken_by) for c in conflicts] == [("shop", "Shop")]


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:5001", Upstream("127.0.0.1", 5001)), ("[::1]:80", Upstream("::1", 80))],
)
def test_upstream_addresses(address: str, expected: Upstream) -> None:
    assert Upstream.parse(address) == expected
    assert expected.is_ip
    assert not Upstream.parse("pod.svc:80").is_ip
    with pytest.raises(ValueError, match="host:port"):
        Upstream.parse("no-port")


def test_events_name_their_endpoint() -> None:
    about = Mentions.model_validate
    assert endpoint_of(
        "sluice.deployment.updated", about({"name": "blue", "endpoint": "shop"})
    ) == ("shop")
    assert endpoint_of("sluice.traffic.changed", about({"name": "shop"})) == "shop"
    assert endpoint_of("sluice.keys.regenerated", about({"name": "shop"})) == "shop"
    assert endpoint_of("sluice.instance.ready", about({"id": "x"})) is None


def test_inconsistent_snapshots_are_refused() -> None:
    d = dep("blue")
    piece = r.route_piece(endpoint("ep", (Share("blue", 100),), d), "x")
    assert piece.clusters == {d.cluster}
    table = r.route_configuration([piece])
    routes_only = Snapshot.build({ROUTE: [(r.ROUTE_CONFIG, table)]})  # the check parses it
    with pytest.raises(InconsistentSnapshot, match="unknown clusters"):
        routes_only.check()
    named = Snapshot.build({ROUTE: [(r.ROUTE_CONFIG, table)]}, {r.ROUTE_CONFIG: piece.clusters})
    with pytest.raises(InconsistentSnapshot, match="unknown clusters"):
        named.check()  # the builder's list of the clusters the table names
    no_eds = Snapshot.build({CLUSTER: [(d.cluster, r.pack(r.deployment_cluster(d)))]})
    with pytest.raises(InconsistentSnapshot, match="without load assignment"):
        no_eds.check()
    orphan = Snapshot.build({ENDPOINT: [(d.cluster, r.pack(r.load_assignment(d)))]})
    with pytest.raises(InconsistentSnapshot, match="without cluster"):
        orphan.check()


def test_batch_job_routes_retry_only_what_never_reached_the_service() -> None:
    """A job request that reached the batch service may have made a job: unlike the
    catch-all host's policy (which retries a reset connection), only a refused or failed
    connection is tried again; an online endpoint's routes are not among them."""
    from sluice.traffic.domain import BatchJobs

    routes = r.batch_job_routes(BatchJobs("127.0.0.1:1", b""))
    assert [route.name for route in routes][:4] == [
        "batch-jobs@path",
        "batch-jobs@host",
        "batch-job@path",
        "batch-job@host",
    ]
    for route in routes:
        assert route.route.retry_policy.retry_on == "connect-failure,refused-stream", route.name
        assert route.route.cluster == r.BATCH_JOBS_CLUSTER
    assert r.batch_job_routes(None) == []
