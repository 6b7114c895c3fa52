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
  ptrace of processes outside it is refused from ABI 1 on.

It runs before anything the deployment controls: the environment's
interpreter in isolated mode without `site` (`-I -S`: no PYTHON* variables,
no `.pth` file of the deployment's environment, no sitecustomize), stdlib
only at import; the restriction survives `execve`. When the kernel has no
Landlock it exits with EXIT_NO_LANDLOCK and says why: the caller fails the
job or instance rather than run it unconfined (SLUICE_LANDLOCK=true).

The spec comes on stdin (as root the deployment's uid may not read the
platform's files), JSON: {"read": [paths], "write": [paths], "argv": [the
command]}; the environment is the deployment process's own.
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
RULE_PATH_BENEATH = 1
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


class LandlockUnavailable(OSError):
    """This kernel (or a seccomp filter) gives no Landlock."""


def abi_version(libc: ctypes.CDLL) -> int:
    """Landlock's ABI version here; LandlockUnavailable when there is none."""
    version = int(libc.syscall(SYS_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION))
    if version < 1:
        err = ctypes.get_errno()
        raise LandlockUnavailable(err, f"Landlock is not available: {os.strerror(err)}")
    return version


def handled_rights(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1's thirteen
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def restrict(read: list[str], write: list[str]) -> int:
    """Allow only `read` (read, list, execute) and `write` (anything but devices) from now
    on, for this process and whatever it executes; returns the ABI version used."""
    libc = ctypes.CDLL(None, use_errno=True)
    abi = abi_version(libc)
    handled = handled_rights(abi)
    attr = RulesetAttr(handled, 0, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = ctypes.sizeof(attr) if abi >= 6 else ctypes.sizeof(ctypes.c_uint64)
    ruleset = int(libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), size, 0))
    if ruleset < 0:
        err = ctypes.get_errno()
        raise LandlockUnavailable(err, f"landlock_create_ruleset: {os.strerror(err)}")
    try:
        for paths, rights in ((read, READ), (write, WRITE)):
            for path in paths:
                _allow(libc, ruleset, path, rights & handled)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(SYS_RESTRICT_SELF, ruleset, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
    finally:
        os.close(ruleset)
    return abi


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


def main() -> None:
    spec = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        abi = restrict([*SYSTEM_READ, *spec["read"]], [*SYSTEM_WRITE, *spec["write"]])
    except OSError as exc:
        print(
            f"the deployment's process cannot be confined ({exc}); it would read the"
            " platform's files. Run on a kernel with Landlock (Linux 5.13+, `landlock` in the"
            " lsm= boot list), or set SLUICE_LANDLOCK=false to run deployment code unconfined",
            flush=True,
        )
        sys.exit(EXIT_NO_LANDLOCK)
    print(f"confined with Landlock (ABI {abi})", flush=True)
    argv = spec["argv"]
    os.execve(argv[0], argv, os.environ)  # noqa: S606 - the worker, as the runner named it


if __name__ == "__main__":
    main()
