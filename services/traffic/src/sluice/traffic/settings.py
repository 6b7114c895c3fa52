"""Settings of the traffic controller only (`SLUICE_TRAFFIC_*`); the shared ones are
`sluice.common.settings.Settings`."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class TrafficSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_TRAFFIC_", extra="ignore")

    # The gateway certificate (PEM chain) and key; unset = a local CA in <state_dir>/tls/.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # host:port of an Envoy ALS (access log) receiver; unset = the metrics service when it
    # is installed, else no access-log sink.
    als_address: str | None = None
    # Envoy sends access-log entries in batches of this many bytes (or every second). Envoy's
    # default, 16 KiB, cost the metrics service 27 µs of CPU per request at 1,500 req/s,
    # 256 KiB 10 µs (fewer gRPC messages; bench/README.md, "metrics"). Also what one Envoy
    # worker holds per log before it drops entries, the stream to the service stalled.
    als_buffer_bytes: int = 256 * 1024
    # Where Envoy's listeners bind; unset = SLUICE_HOST (loopback locally).
    listen_host: str | None = None
    # Per-request limits of the gateway (traffic.domain.Limits).
    max_request_bytes: int = 16 * 1024 * 1024
    request_headers_timeout_s: float = 10.0
    request_receive_timeout_s: float = 30.0
    debounce_ms: int = 20
    resync_interval_s: float = 30.0
