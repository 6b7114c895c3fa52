"""SecantusDB, the embedded MongoDB-compatible server, as the platform runs it.

`python -m sluice.common.embedded_mongo <secantusd-py's arguments>` is SecantusDB's own
`secantusd-py` command with one change: a SIGTERM stops it in milliseconds instead of
about two seconds. Its stop closes the listening socket and then waits up to 2 s for its
accept thread, which closing does not wake on Linux (the thread stays blocked in
accept(2)); shutting the socket down first does (accept fails with EINVAL), and the stop
goes on at once with its own orderly part: connections drained, open transactions
rolled back, WiredTiger closed. Every `sluice down`, restart and test platform paid the
two seconds.
"""

from __future__ import annotations

import contextlib
import socket
import sys

# The server's command line, its arguments to follow (secantus is imported by the server
# process only: the CLI builds this command without loading a database).
COMMAND = (sys.executable, "-m", "sluice.common.embedded_mongo")


def main(argv: list[str] | None = None) -> int:
    from secantus import cli
    from secantus.server import SecantusDBServer

    class PromptStopServer(SecantusDBServer):  # type: ignore[misc]
        def stop(self) -> None:
            # (SecantusDB 0.7's fields; another version without them stops as it would)
            listener, stopping = getattr(self, "_socket", None), getattr(self, "_stop_event", None)
            if isinstance(listener, socket.socket) and stopping is not None:
                stopping.set()  # the accept loop's own test, before it wakes
                with contextlib.suppress(OSError):
                    listener.shutdown(socket.SHUT_RDWR)
            super().stop()

    cli.SecantusDBServer = PromptStopServer  # what cli.main() starts
    return int(cli.main(argv))


if __name__ == "__main__":
    sys.exit(main())
