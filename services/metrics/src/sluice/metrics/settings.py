"""Settings of the metrics & cost aggregator only (`SLUICE_METRICS_*`); the shared ones
are `sluice.common.settings.Settings`."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class MetricsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_METRICS_", extra="ignore")

    # The width of the stored buckets: 60 is Azure's one-minute grain; tests use a few seconds
    # so that alert windows pass quickly. Query steps are multiples of it.
    bucket_s: int = 60
    # How often the in-memory minute buckets are written to MongoDB: the most a crash loses.
    flush_interval_s: float = 1.0
    # Minute documents older than this are deleted by MongoDB's TTL monitor.
    retention_days: float = 30.0
    # How often snapshots go out on NATS (`sluice.metrics.<endpoint>.<deployment>`) and
    # alert rules are evaluated.
    snapshot_interval_s: float = 5.0
    # Buckets waiting for MongoDB beyond this many are dropped (and counted): bounded memory
    # when the database is down for long.
    max_pending_buckets: int = 100_000
    # The hourly prices' currency, as the instance catalogue states them.
    currency: str = "USD"
    # How often the Envoys' latest stats (their stats sink streams them every 5 s) become a
    # ConnectionsActive sample (envoy_stats.py).
    envoy_stats_interval_s: float = 5.0
