"""A bare access-log receiver for bench/metrics/envoy_log_cost.py, without MongoDB, NATS
or TLS: `python bench/metrics/log_sink.py als|fluentd|otel|drain PORT`.

- `fluentd`: the metrics service's own receiver (sluice.metrics.forward).
- `als`: the gRPC access-log receiver the metrics service had until 2026-11-26 (its
  counting loop, kept here for the comparison): Envoy's entries decoded and counted into
  the same buckets.
- `otel`: an OTLP logs receiver (Envoy's OpenTelemetry access logger) that reads each
  record's body.
- `drain`: reads and drops (for a record the metrics service no longer reads).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc

from sluice.metrics import forward
from sluice.metrics.buckets import Buckets
from sluice.metrics.sketch import key_of


class AlsSink(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    def __init__(self, buckets: Buckets) -> None:
        self._buckets = buckets

    async def StreamAccessLogs(  # noqa: N802 - the proto's method name
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> Any:
        async for message in request_iterator:
            for entry in message.http_logs.log_entry:
                common = entry.common_properties
                tags = common.custom_tags
                endpoint = tags["sluice.endpoint"] or tags["sluice.route_endpoint"]
                bucket = self._buckets.get(
                    endpoint, tags["sluice.deployment"], common.start_time.seconds
                )
                bucket.requests += 1
                took = common.time_to_last_downstream_tx_byte
                latency = took.seconds * 1000.0 + took.nanos / 1e6
                k = key_of(latency)
                bucket.latency[k] = bucket.latency.get(k, 0) + 1
                code = entry.response.response_code.value
                bucket.status_code[str(code)] = bucket.status_code.get(str(code), 0) + 1
                request, response = entry.request, entry.response
                bucket.bytes_in += request.request_headers_bytes + request.request_body_bytes
                bucket.bytes_out += response.response_headers_bytes + response.response_body_bytes
        return als_pb2.StreamAccessLogsResponse()


class OtelSink(logs_service_pb2_grpc.LogsServiceServicer):  # type: ignore[misc]
    """OTLP logs from Envoy's OpenTelemetry access logger: each body is the record's line."""

    def __init__(self) -> None:
        self.records = 0

    async def Export(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        for resource in request.resource_logs:
            for scope in resource.scope_logs:
                for log in scope.log_records:
                    self.records += bool(log.body.string_value)
        return logs_service_pb2.ExportLogsServiceResponse()


class Drain(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


async def main(kind: str, port: int) -> None:
    buckets = Buckets()
    if kind == "als":
        server = grpc.aio.server()
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(AlsSink(buckets), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
    elif kind == "otel":
        server = grpc.aio.server()
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(OtelSink(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
    elif kind == "fluentd":
        await forward.serve("127.0.0.1", port, buckets, forward.IngestStats())
    else:
        await asyncio.get_running_loop().create_server(Drain, "127.0.0.1", port)
    while True:
        await asyncio.sleep(5)
        buckets.take()  # what the flusher would take


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
