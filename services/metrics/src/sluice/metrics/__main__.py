"""`python -m sluice.metrics`: load settings, configure logging, serve."""

import sluice.common  # noqa: F401  (first: turns gRPC's fork handlers off)
from sluice.common.log import configure_logging
from sluice.common.runtime import run
from sluice.common.settings import Settings
from sluice.common.tracing import SERVICE_INSTRUMENTATION, configure_service_tracing
from sluice.metrics.app import serve
from sluice.metrics.settings import MetricsSettings


def main() -> None:
    settings = Settings(service_name="metrics")
    configure_logging(level=settings.log_level, fmt=settings.log_format, service="metrics")
    configure_service_tracing("metrics", settings, instrument=SERVICE_INSTRUMENTATION)
    run(lambda: serve(settings, MetricsSettings()))


if __name__ == "__main__":
    main()
