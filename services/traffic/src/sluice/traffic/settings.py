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
    # Envoy's access log to the metrics service (the fluentd logger, to the bootstrap's
    # `sluice_access_log` cluster: the metrics service's access-log port). Unset = on when
    # the metrics service is installed and its access-log port is set.
    access_log: bool | None = None
    # Each Envoy worker sends its access-log records when this many bytes are buffered, or
    # every second. A bigger batch costs the metrics service less per record (bench/README.md,
    # "metrics"); it is also what a worker holds before it drops records, the service away.
    access_log_buffer_bytes: int = 256 * 1024
    # Where Envoy's listeners bind; unset = SLUICE_HOST (loopback locally).
    listen_host: str | None = None
    # Per-request limits of the gateway (traffic.domain.Limits).
    max_request_bytes: int = 16 * 1024 * 1024
    request_headers_timeout_s: float = 10.0
    request_receive_timeout_s: float = 30.0
    debounce_ms: int = 20
    resync_interval_s: float = 30.0
