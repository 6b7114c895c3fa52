"""The SDK's gRPC channels: reads ride out a moment's unavailability, writes never repeat.

A client polling a job finds the service unreachable for a moment now and
then (a connection refused or reset: a service restarting, a busy host), and
one such moment failed `sluice job show` and a CI run. gRPC's own retry policy
(gRFC A6, in the channel's service config) retries a *read* (a unary
`Get*`/`List*` method of the channel's services) that ends UNAVAILABLE: up to
5 attempts, backoffs drawn up to 0.2, 0.4, 0.8 and 1.6 s (1.5 s in all on
average). Writes are not retried: a lost answer could repeat them.
Reconnecting is quick too (100 ms, at most 1 s, instead of gRPC's 1 s growing
to 120 s): a CLI's channel lives for one command, and the services are a few
milliseconds away.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import grpc
from google.protobuf.descriptor import ServiceDescriptor

READ_PREFIXES = ("Get", "List")
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.2s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def read_methods(services: Iterable[ServiceDescriptor]) -> list[dict[str, str]]:
    """The unary `Get*`/`List*` methods of `services`, as service-config names."""
    return [
        {"service": service.full_name, "method": method.name}
        for service in services
        for method in service.methods
        if method.name.startswith(READ_PREFIXES)
        and not method.client_streaming
        and not method.server_streaming
    ]


def reads_channel(address: str, services: Iterable[ServiceDescriptor]) -> grpc.Channel:
    """A channel to `address` whose reads of `services` are retried (module docstring)."""
    return retrying_channel(address, read_methods(services))


def retrying_channel(address: str, methods: list[dict[str, str]]) -> grpc.Channel:
    """A channel to `address` that retries `methods` (service-config names) UNAVAILABLE."""
    config = {"methodConfig": [{"name": methods, "retryPolicy": RETRY_POLICY}]}
    return grpc.insecure_channel(
        address,
        options=[
            ("grpc.service_config", json.dumps(config)),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ],
    )


def unreachable(what: str, address: str, exc: grpc.RpcError) -> str:
    """The message of an UNAVAILABLE call: where, and gRPC's own reason."""
    return f"cannot reach {what} at {address} ({exc.details() or 'no detail'})"
