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
    # Envoy sends access-log entries in batches of this many bytes (or every second): fewer,
    # larger gRPC messages cost less per entry on both sides (bench/README.md, "metrics");
    # also what one Envoy worker holds per log before it drops entries, the stream stalled.
    als_buffer_bytes: int = 16 * 1024
    # Where Envoy's listeners bind; unset = SLUICE_HOST (loopback locally).
    listen_host: str | None = None
    # Per-request limits of the gateway (traffic.domain.Limits).
    max_request_bytes: int = 16 * 1024 * 1024
    request_headers_timeout_s: float = 10.0
    request_receive_timeout_s: float = 30.0
    debounce_ms: int = 20
    resync_interval_s: float = 30.0
