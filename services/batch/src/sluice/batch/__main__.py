"""`python -m sluice.batch`: load settings, configure logging, serve."""

from sluice.batch.app import serve
from sluice.common.log import configure_logging
from sluice.common.runtime import run
from sluice.common.settings import Settings


def main() -> None:
    settings = Settings(service_name="batch")
    configure_logging(level=settings.log_level, fmt=settings.log_format, service="batch")
    run(lambda: serve(settings))


if __name__ == "__main__":
    main()
