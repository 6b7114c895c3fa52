"""Start deployment code inside a Landlock sandbox: `python -I -S confine.py` (spec on stdin).

In compose and Kubernetes the batch service and the provisioner cannot
switch users (their containers run as one uid, without capabilities), so
batch workers and the local backend's instances, which run the deployment's
code, would share that uid and read whatever it can: the service's NATS
password file, the whole state volume (every deployment's artifacts, other
jobs' files). Landlock (Linux 5.13+, an unprivileged LSM that Docker's and
containerd's default seccomp profiles allow) lets a process give up access
to every file but those it names, for itself and everything it executes.
This launcher does that, then execs the deployment's process:

- read and execute: the system (`/usr`, `/lib*`, `/bin`, `/sbin`, `/etc`,
  `/opt`), `/proc` and `/sys`, the platform's and the environment's Python
  installations, and what the caller names (the deployment's model and code,
  a job's input files);
- read and write: what the caller names (HOME, a job's parts folder, a
  deployment's data collector and traces folders), `/dev/shm` and the
  harmless character devices (`/dev/null`, `/dev/zero`, `/dev/urandom`);
- nothing else: the state volume's other entries and `/run/secrets` are
  refused even though the uid owns them;
- from ABI 6 on, no signal to a process outside the sandbox (the service,
  other deployments' processes) and no abstract Unix socket made outside it;
  ptrace of processes outside it is refused from ABI 1 on;
- with "net" in the spec (ABI 4, Linux 6.7+): TCP bind only to the ports it
  lists under "bind", TCP connect only to those under "connect" (an online
  deployment with `egress_public_network_access: disabled`: its own port,
  and the trace collector's when it exports spans). Landlock's network rules
  name ports, not addresses, and leave UDP alone.

It runs before anything the deployment controls: the environment's
interpreter in isolated mode without `site` (`-I -S`: no PYTHON* variables,
no `.pth` file of the deployment's environment, no sitecustomize), stdlib
only at import; the restriction survives `execve`. When the kernel has no
Landlock it exits with EXIT_NO_LANDLOCK and says why: the caller fails the
job or instance rather than run it unconfined (SLUICE_LANDLOCK=true).

The spec comes on stdin (as root the deployment's uid may not read the
platform's files), JSON: {"read": [paths], "write": [paths], "argv": [the
command], optionally "net": {"bind": [ports], "connect": [ports]}}; "read"
null leaves files alone (network rules only: the local default, where
deployments run as users of their own). The environment is the deployment
process's own.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

EXIT_NO_LANDLOCK = 3  # the batch runner's EXIT_INIT_FAILED: the job fails with this log's tail

# <linux/landlock.h>
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2
BIND_TCP, CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
NET_ABI = 4
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR
WRITE = (
    READ | WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO
    | MAKE_SYM | REFER | TRUNCATE
)  # fmt: skip
# The syscalls' numbers are the same on every architecture (added after the unified table).
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
PR_SET_NO_NEW_PRIVS = 38

SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/opt", "/proc", "/sys")
# /dev/shm: POSIX shared memory and semaphores (multiprocessing, joblib), shared by design.
SYSTEM_WRITE = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/shm")  # noqa: S108


class RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class NetPortAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


class LandlockUnavailable(OSError):
    """This kernel (or a seccomp filter) gives no Landlock."""


class NoNetworkRules(LandlockUnavailable):
    """This kernel's Landlock predates its network rules (ABI 4, Linux 6.7)."""


def abi_version(libc: ctypes.CDLL) -> int:
    """Landlock's ABI version here; LandlockUnavailable when there is none."""
    version = int(libc.syscall(SYS_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION))
    if version < 1:
        err = ctypes.get_errno()
        raise LandlockUnavailable(err, f"Landlock is not available: {os.strerror(err)}")
    return version


def kernel_abi() -> int:
    """Landlock's ABI version on this kernel, 0 when it has none."""
    try:
        return abi_version(ctypes.CDLL(None, use_errno=True))
    except LandlockUnavailable:
        return 0


def handled_rights(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1's thirteen
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def restrict(
    read: list[str] | None, write: list[str], net: dict[str, list[int]] | None = None
) -> int:
    """Allow only `read` (read, list, execute) and `write` (anything but devices) from now
    on, for this process and whatever it executes (`read` None: files are not restricted);
    with `net`, TCP bind and connect only to the ports it lists. Returns the ABI version."""
    libc = ctypes.CDLL(None, use_errno=True)
    abi = abi_version(libc)
    if net is not None and abi < NET_ABI:
        raise NoNetworkRules(0, f"Landlock ABI {abi} has no network rules (ABI {NET_ABI})")
    handled = handled_rights(abi) if read is not None else 0
    handled_net = BIND_TCP | CONNECT_TCP if net is not None else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 and read is not None else 0
    attr = RulesetAttr(handled, handled_net, scoped)
    if abi >= 6:
        size = ctypes.sizeof(attr)
    elif abi >= NET_ABI:
        size = RulesetAttr.scoped.offset
    else:
        size = ctypes.sizeof(ctypes.c_uint64)
    ruleset = int(libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), size, 0))
    if ruleset < 0:
        err = ctypes.get_errno()
        raise LandlockUnavailable(err, f"landlock_create_ruleset: {os.strerror(err)}")
    try:
        if read is not None:
            for paths, rights in ((read, READ), (write, WRITE)):
                for path in paths:
                    _allow(libc, ruleset, path, rights & handled)
        for key, right in (("bind", BIND_TCP), ("connect", CONNECT_TCP)):
            for port in (net or {}).get(key, []):
                _allow_port(libc, ruleset, int(port), right)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(SYS_RESTRICT_SELF, ruleset, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
    finally:
        os.close(ruleset)
    return abi


def _allow_port(libc: ctypes.CDLL, ruleset: int, port: int, right: int) -> None:
    attr = NetPortAttr(right, port)
    if libc.syscall(SYS_ADD_RULE, ruleset, RULE_NET_PORT, ctypes.byref(attr), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_add_rule port {port}: {os.strerror(err)}")


def _allow(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):
        return  # e.g. /lib32 here, or the platform's private interpreter: none to allow
    try:
        if not Path(path).is_dir():
            rights &= FILE_RIGHTS  # a rule on a file may name only rights on files
        attr = PathBeneathAttr(rights, fd)
        if libc.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(attr), 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_add_rule {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def command(python: str) -> list[str]:
    """This launcher's command (the spec on its stdin), run by `python`, the environment's
    interpreter (one the deployment's user can run)."""
    return [python, "-I", "-S", __file__]


def platform_paths(python: str) -> set[str]:
    """What any deployment process reads of the platform and its environment: the
    interpreters' installations, the `sluice` packages (in site-packages, or a checkout's
    `src` folders when editable: the folders holding `sluice`, which imports list) and the
    inference server's sources. Imports the platform: not for the launcher itself."""
    import sluice
    from sluice.common import interpreters

    interpreters_ = {sys.executable, python}
    paths = {sys.prefix, sys.base_prefix, str(Path(python).parent.parent)}
    paths |= {str(Path(os.path.realpath(p)).parent.parent) for p in interpreters_}
    paths |= {str(Path(path).parent) for path in sluice.__path__}
    return paths | set(interpreters.server_sources() or ())


def refusal(exc: OSError, files: bool) -> str:
    """Why the deployment's process does not start, and the ways out."""
    if files and not isinstance(exc, NoNetworkRules):
        return (
            f"the deployment's process cannot be confined ({exc}); it would read the"
            " platform's files. Run on a kernel with Landlock (Linux 5.13+, `landlock` in the"
            " lsm= boot list), or set SLUICE_LANDLOCK=false to run deployment code unconfined"
        )
    return (
        f"the deployment's process cannot be kept off the network ({exc}) as its"
        " `egress_public_network_access: disabled` asks. Run on a kernel with Landlock's"
        " network rules (Linux 6.7+), or set egress_public_network_access: enabled"
    )


def main() -> None:
    spec = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        read = None if spec["read"] is None else [*SYSTEM_READ, *spec["read"]]
        abi = restrict(read, [*SYSTEM_WRITE, *spec["write"]], spec.get("net"))
    except OSError as exc:
        print(refusal(exc, files=spec["read"] is not None), flush=True)
        sys.exit(EXIT_NO_LANDLOCK)
    net = spec.get("net")
    shown = f"; TCP bind {net.get('bind', [])}, connect {net.get('connect', [])}" if net else ""
    print(f"confined with Landlock (ABI {abi}){shown}", flush=True)
    argv = spec["argv"]
    os.execve(argv[0], argv, os.environ)  # noqa: S606 - the worker, as the runner named it


if __name__ == "__main__":
    main()
