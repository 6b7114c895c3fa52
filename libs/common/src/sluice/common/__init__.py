"""Shared plumbing for Sluice services (settings, logging, events, Mongo, gRPC, supervisor).

Importing it turns gRPC's fork handlers off for the process (unless the environment
already says otherwise). They must be off before `grpc` is first imported, which is why
this is here and why each service's `__main__` imports this package first. The
provisioner, the batch runner and environment builds start processes as other users,
which makes `subprocess` fork() where it would otherwise vfork(); with the handlers on,
the forked child restarts gRPC's poller thread, `close_fds` closes the poller's epoll
descriptor before exec(), and the child aborts ("Epoll1Poller ... epoll_wait error: Bad
file descriptor", grpc/grpc#43055). No Sluice process uses gRPC across a fork without
exec(), so the handlers have nothing to do here.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
