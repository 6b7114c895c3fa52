"""The gateway's routing as the provisioner sees it (from `traffic.applied`)."""

from __future__ import annotations

from sluice.provisioner.routing import RoutingView


def test_a_deployment_the_gateway_does_not_know_is_not_waited_for() -> None:
    view = RoutingView()
    assert view.routes("ep/blue", "127.0.0.1:5001") is None
    view.update({"ep/green": ["127.0.0.1:5002"]})
    assert view.routes("ep/blue", "127.0.0.1:5001") is None


def test_routed_addresses_and_what_changed() -> None:
    view = RoutingView()
    assert view.update({"ep/blue": ["127.0.0.1:5001"], "ep/green": []}) == {"ep/blue", "ep/green"}
    assert view.routes("ep/blue", "127.0.0.1:5001") is True
    assert view.routes("ep/blue", "127.0.0.1:5002") is False
    assert view.routes("ep/green", "127.0.0.1:5002") is False
    # The next applied configuration: blue rolled to a new instance, green was deleted.
    assert view.update({"ep/blue": ["127.0.0.1:5002"]}) == {"ep/blue", "ep/green"}
    assert view.routes("ep/blue", "127.0.0.1:5001") is False
    assert view.routes("ep/green", "127.0.0.1:5002") is None
    assert view.update({"ep/blue": ["127.0.0.1:5002"]}) == set()


def test_ipv6_addresses_match_with_or_without_brackets() -> None:
    view = RoutingView()
    view.update({"ep/blue": ["[::1]:5001"]})
    assert view.routes("ep/blue", "::1:5001") is True
    assert view.routes("ep/blue", "[::1]:5001") is True
