"""`python -m sluice.traffic`: load settings, configure logging, serve ADS."""

import sluice.common  # noqa: F401  (first: turns gRPC's fork handlers off)
from sluice.common.log import configure_logging
from sluice.common.runtime import run
from sluice.common.settings import Settings
from sluice.common.tracing import SERVICE_INSTRUMENTATION, configure_service_tracing
from sluice.traffic.app import serve
from sluice.traffic.settings import TrafficSettings


def main() -> None:
    settings = Settings(service_name="traffic")
    configure_logging(level=settings.log_level, fmt=settings.log_format, service="traffic")
    configure_service_tracing("traffic", settings, instrument=SERVICE_INSTRUMENTATION)
    run(lambda: serve(settings, TrafficSettings()))


if __name__ == "__main__":
    main()
