"""`python -m sluice.inference --model PATH --code DIR --scoring-script score.py [--port N] ...`"""

from __future__ import annotations

import dataclasses
import os
import sys

from sluice.common.platform_link import platform_first

# In a deployment's environment the server's own dependencies come from the platform,
# whatever the deployment pins (platform_link.py says why); numpy and the like, which the
# scoring code shares, are imported later, from the deployment's environment.
with platform_first():
    import uvloop

    from sluice.common import gateway_auth
    from sluice.common.log import configure_logging
    from sluice.inference.app import serve
    from sluice.inference.config import parse_args
    from sluice.inference.workers import run_workers


def main() -> None:
    # Out of the environment before the scoring script is imported (workers get it back).
    secret = os.environ.pop(gateway_auth.ENV, None) or None
    config = dataclasses.replace(parse_args(), gateway_secret=secret)
    configure_logging(level=config.log_level, fmt=config.log_format, service="inference")
    if config.workers > 1 and config.listen_fd is None:
        sys.exit(run_workers(config))
    code = uvloop.run(serve(config))
    # A run() that outlived its timeout may still hold a thread; the interpreter's normal
    # exit would wait for it forever, so leave without joining threads.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
