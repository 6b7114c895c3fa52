"""Start a batch worker inside a Landlock sandbox: `python -I -S confine.py <spec>`.

In compose and Kubernetes the batch service cannot switch users (its
container runs as one uid, without capabilities), so its workers, which run
the deployment's code, would share its uid and read whatever it can: its
NATS password file, the whole state volume (every deployment's artifacts,
other jobs' files). Landlock (Linux 5.13+, an unprivileged LSM that Docker's
and containerd's default seccomp profiles allow) lets a process give up
access to every file but those it names, for itself and everything it
executes. This launcher does that, then execs the worker:

- read and execute: the system (`/usr`, `/lib*`, `/bin`, `/sbin`, `/etc`,
  `/opt`), `/proc` and `/sys`, the platform's and the environment's Python
  installations, the deployment's model and code and the job's input files;
- read and write: the job's HOME and parts folder, `/dev/shm` and the
  harmless character devices (`/dev/null`, `/dev/zero`, `/dev/urandom`);
- nothing else: the state volume's other entries and `/run/secrets` are
  refused even though the uid owns them;
- from ABI 6 on, no signal to a process outside the sandbox (the batch
  service, other jobs' workers) and no abstract Unix socket made outside it;
  ptrace of processes outside it is refused from ABI 1 on.

It runs before anything the deployment controls: the platform's interpreter
in isolated mode without `site` (`-I -S`: no PYTHON* variables, no `.pth`
file of the deployment's environment, no sitecustomize), stdlib only; the
restriction survives `execve` into the environment's interpreter. When the
kernel has no Landlock it exits with EXIT_NO_LANDLOCK and says why: the
runner then fails the job rather than run it unconfined.

The spec comes on stdin (as root the worker's uid may not read the runner's
files), JSON: {"read": [paths], "write": [paths], "argv": [the worker's
command]}; the environment is the worker's own.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

EXIT_NO_LANDLOCK = 3  # the runner's EXIT_INIT_FAILED: the job fails with this log's tail

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


def main() -> None:
    spec = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        abi = restrict([*SYSTEM_READ, *spec["read"]], [*SYSTEM_WRITE, *spec["write"]])
    except OSError as exc:
        print(
            f"the worker cannot be confined ({exc}); it would read the batch service's files."
            " Run on a kernel with Landlock (Linux 5.13+, `landlock` in the lsm= boot list),"
            " or set SLUICE_BATCH_LANDLOCK=false to run workers unconfined",
            flush=True,
        )
        sys.exit(EXIT_NO_LANDLOCK)
    print(f"worker confined with Landlock (ABI {abi})", flush=True)
    argv = spec["argv"]
    os.execve(argv[0], argv, os.environ)  # noqa: S606 - the worker, as the runner named it


if __name__ == "__main__":
    main()
