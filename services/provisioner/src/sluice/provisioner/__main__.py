"""`python -m sluice.provisioner`: load settings, configure logging, serve."""

from sluice.common.log import configure_logging
from sluice.common.runtime import run
from sluice.common.settings import Settings
from sluice.provisioner.app import serve


def main() -> None:
    settings = Settings(service_name="provisioner")
    configure_logging(level=settings.log_level, fmt=settings.log_format, service="provisioner")
    run(lambda: serve(settings))


if __name__ == "__main__":
    main()
