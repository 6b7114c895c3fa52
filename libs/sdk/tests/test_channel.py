"""The SDK's channels retry reads through a moment's unavailability, and only reads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sluice.common.supervisor import free_port
from sluice.sdk.channel import read_methods, retrying_channel
from sluice.testing.wait import wait_for
from sluice.v1 import batch_pb2

CHECK = {"service": "grpc.health.v1.Health", "method": "Check"}


def test_reads_are_the_unary_get_and_list_methods() -> None:
    names = {m["method"] for m in read_methods([batch_pb2.DESCRIPTOR.services_by_name["Batch"]])}
    assert {"GetJob", "ListJobs"} <= names
    # A write could be repeated by a retry; a stream could repeat what it already gave.
    assert not names & {"InvokeBatchEndpoint", "CancelJob", "StreamJobLogs"}


@pytest.fixture
def late_server() -> Iterator[tuple[str, threading.Event]]:
    """An address nothing listens on until the test sets the event (then a health server)."""
    port = free_port()
    go, stop = threading.Event(), threading.Event()

    def serve() -> None:
        go.wait()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        stop.wait()
        server.stop(grace=None)

    thread = threading.Thread(target=serve)
    thread.start()
    yield f"127.0.0.1:{port}", go
    go.set()
    stop.set()
    thread.join()


def _check(channel: grpc.Channel, go: threading.Event) -> health_pb2.HealthCheckResponse:
    """A health check; the server starts (`go`) once the channel failed to connect."""

    def on_state(state: grpc.ChannelConnectivity) -> None:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            go.set()

    channel.subscribe(on_state)
    try:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=20
        )
    finally:
        channel.unsubscribe(on_state)
        _await_poller_stopped(channel)


def _await_poller_stopped(channel: grpc.Channel) -> None:
    """Wait for grpcio's connectivity-polling thread to notice nobody listens any more.

    That thread wakes every 0.2 s; closing the channel in the moment it is between two
    waits makes it raise "Cannot monitor channel state: Channel closed!" (grpcio's race,
    seen as an unhandled-thread warning in a later test). grpcio offers no public way to
    wait for it, hence the private attribute.
    """
    state = channel._connectivity_state  # type: ignore[attr-defined]
    wait_for(lambda: not state.polling, "grpcio's connectivity poller to stop", deadline=5)


def test_a_read_reaches_a_server_that_starts_a_moment_later(
    late_server: tuple[str, threading.Event],
) -> None:
    address, go = late_server
    with retrying_channel(address, [CHECK]) as channel:
        assert _check(channel, go).status == health_pb2.HealthCheckResponse.SERVING


def test_without_the_policy_the_same_read_fails_at_once(
    late_server: tuple[str, threading.Event],
) -> None:
    address, go = late_server
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as failed:
        _check(channel, go)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
