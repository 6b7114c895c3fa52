"""`python -m sluice.batch`: load settings, configure logging, serve."""

import sluice.common  # noqa: F401  (first: turns gRPC's fork handlers off)
from sluice.batch.app import serve
from sluice.common.log import configure_logging
from sluice.common.runtime import run
from sluice.common.settings import Settings
from sluice.common.tracing import SERVICE_INSTRUMENTATION, configure_service_tracing


def main() -> None:
    settings = Settings(service_name="batch")
    configure_logging(level=settings.log_level, fmt=settings.log_format, service="batch")
    configure_service_tracing("batch", settings, instrument=SERVICE_INSTRUMENTATION)
    run(lambda: serve(settings))


if __name__ == "__main__":
    main()
