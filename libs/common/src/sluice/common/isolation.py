"""Keeping deployment code away from the platform on the local backend.

A deployment's `score.py` is somebody else's code running on the platform's
machine. What the local backend does about it:

- **Environment**: an instance starts from an explicit, minimal environment
  (`instance_env`): PATH/HOME/LANG/TMPDIR, Azure's documented variables
  (`AZUREML_MODEL_DIR` is set by the inference server, `AML_APP_ROOT`,
  `AZUREML_ENTRY_SCRIPT`, `AZUREML_DEPLOYMENT_NAME`, ...) and the deployment's
  own `environment_variables`. Nothing of the platform's (`SLUICE_ADMIN_TOKEN`,
  `SLUICE_SECRET_KEY`, `SLUICE_MONGODB_URI`, ...) is passed on.
- **Identity**: when the platform runs as root, each deployment runs as a user
  of its own, `sluice-d-<hash of endpoint/deployment>` (created with
  `useradd`, removed when the deployment is deleted), so it can read neither
  the platform's files nor another deployment's. Run as another user, the
  platform cannot switch users: deployments run as that user, and only the
  environment and the file modes below separate them.
- **Interpreter**: deployment users must be able to run Python; as root,
  environments use only interpreters they can run
  (`sluice.common.interpreters.for_deployment_users`).
- **Files**: the state directory is traversable but not listable (0711) and
  everything in it is private to the platform user (0700/0600) except the
  built environments (`envs/`, no secrets, readable by all) and
  `workspaces/<endpoint>/<deployment>/` (0711, the platform's), which holds
  the deployment user's private copies of its model and code (under
  `artifacts/`, 0711, the platform's) and its HOME/TMPDIR (`home/`, 0700, the
  deployment user's): the user owns nothing on the way there, so it cannot
  swap a folder for a symbolic link that root would then follow.
  `datastore/` is traversable (0711) only on the way to
  `datastore/workspaceblobstore/modelDataCollector/<endpoint>/<deployment>/`
  (0700, owned by the deployment's user), where its data collector writes
  (`collector_folder`); the datastore's other entries stay private. Likewise
  `traces/instances/<endpoint>/<deployment>/` for the spans of its inference
  servers, while `traces/platform/` (the services' spans) stays private.

What it cannot do: there is no network namespace, so an instance can still
open connections to loopback services (every one of them requires a
credential it does not have) and to the outside; there are no CPU or memory
cgroups (the provisioner replaces an instance over its memory limit);
processes of all users are visible in /proc (not their environments). The
Kubernetes backend adds a pod security context, NetworkPolicy and no
service-account token (see kubernetes.py).
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sluice.common.collected import COLLECTOR_PATH, DATASTORE, DEFAULT_DATASTORE, collected_dir
from sluice.common.resources import OnlineDeploymentSpec
from sluice.common.tracing import instance_folder, platform_folder

# Entries of the state directory that deployment users need to reach.
SHARED_ENTRIES = frozenset({"envs", "workspaces", "batch-workspaces", "datastore", "traces"})
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
USER_PREFIX = "sluice-d-"
USERADD_ATTEMPTS_S = 10.0  # /etc/passwd is locked while another useradd runs
USERDEL_LOCKED = frozenset({1, 10})  # cannot update (lock) /etc/passwd, /etc/group
GROUPDEL_LOCKED = 10  # cannot update (lock) /etc/group


class IsolationError(RuntimeError):
    """A deployment cannot be given its own user or workspace; the message says why."""


@dataclass(frozen=True)
class Account:
    """Who an instance runs as."""

    name: str
    uid: int
    gid: int

    @property
    def switches(self) -> bool:
        """True when the instance runs as a user other than the platform's."""
        return self.uid != os.geteuid()


def isolating() -> bool:
    """Deployments get users of their own only when the platform may create and become them."""
    return os.geteuid() == 0


def user_name(endpoint: str, deployment: str) -> str:
    digest = hashlib.sha256(f"{endpoint}/{deployment}".encode()).hexdigest()[:12]
    return USER_PREFIX + digest


def account_for(endpoint: str, deployment: str) -> Account:
    """The deployment's own user (created on first use) as root, else the platform's user."""
    if not isolating():
        me = pwd.getpwuid(os.geteuid())
        return Account(me.pw_name, me.pw_uid, me.pw_gid)
    name = user_name(endpoint, deployment)
    deadline = time.monotonic() + USERADD_ATTEMPTS_S
    while True:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return Account(name, entry.pw_uid, entry.pw_gid)
        useradd = [_tool("useradd"), "--no-create-home", "--home-dir", "/nonexistent"]
        useradd += ["--shell", "/usr/sbin/nologin"]
        # A group left by an interrupted userdel (see remove_account) is the user's again.
        useradd += ["--gid", name] if _group_exists(name) else ["--user-group"]
        useradd.append(name)
        result = subprocess.run(useradd, capture_output=True, text=True, check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                return Account(name, entry.pw_uid, entry.pw_gid)
            raise IsolationError(
                f"cannot create the deployment's user {name} (useradd: "
                f"{result.stderr.strip() or result.returncode})"
            )
        time.sleep(0.1)  # another useradd holds the lock on /etc/passwd


def remove_account(endpoint: str, deployment: str) -> None:
    """Delete the deployment's user and its group (root only; its processes are stopped by
    then, else userdel refuses and both are kept). A group left without its user (by a
    useradd or userdel killed halfway) is removed too: account_for would reuse it anyway."""
    if not isolating():
        return
    name = user_name(endpoint, deployment)
    deadline = time.monotonic() + USERADD_ATTEMPTS_S
    while _user_exists(name):
        userdel = subprocess.run([_tool("userdel"), name], capture_output=True, check=False)
        if userdel.returncode not in USERDEL_LOCKED or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # another useradd or userdel holds the lock on /etc/passwd or /etc/group
    while _group_exists(name) and not _user_exists(name):
        groupdel = subprocess.run([_tool("groupdel"), name], capture_output=True, check=False)
        if groupdel.returncode != GROUPDEL_LOCKED or time.monotonic() > deadline:
            break
        time.sleep(0.1)


def _user_exists(name: str) -> bool:
    return _listed(pwd.getpwnam, name)


def _group_exists(name: str) -> bool:
    return _listed(grp.getgrnam, name)


def _listed(lookup: Callable[[str], object], name: str) -> bool:
    """True when /etc/passwd or /etc/group (`lookup`) has `name`."""
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def stop_processes_of(uid: int) -> int:
    """Kill every process running as `uid` (a build's user, whose build code may have left
    one behind, which would keep userdel from removing it); how many."""
    import psutil  # here: the CLI imports this module

    killed = 0
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if uids is not None and uid in (uids.real, uids.effective):
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed += 1
    return killed


def give_to_platform(tree: Path) -> None:
    """Make a tree another user wrote the platform's (root's): owner, no set-id bit and
    nothing writable by others, links not followed. A built environment is shared by every
    deployment with the same requirements: none of them (nor a later build) may change it."""
    for dirpath, dirnames, filenames in os.walk(tree):
        here = Path(dirpath)
        for path in [here, *(here / n for n in dirnames + filenames)]:
            os.lchown(path, os.geteuid(), os.getegid())
            if not path.is_symlink():
                mode = stat.S_IMODE(path.lstat().st_mode)
                path.chmod(mode & ~(stat.S_ISUID | stat.S_ISGID | stat.S_IWGRP | stat.S_IWOTH))


def _tool(name: str) -> str:
    found = shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        raise IsolationError(f"{name} is not installed: each deployment needs a user of its own")
    return found


def instance_env(
    spec: OnlineDeploymentSpec,
    instance_id: str,
    python: str,
    home: Path,
    code: Path | None,
    scoring_script: str | None,
) -> dict[str, str]:
    """The whole environment of an instance: basics, Azure's variables, the deployment's own."""
    env = {
        **spec.environment_variables,
        "PATH": f"{Path(python).parent}:{BASE_PATH}",
        "HOME": str(home),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "AZUREML_DEPLOYMENT_NAME": spec.name,
        "AZUREML_ENDPOINT_NAME": spec.endpoint_name,
        "SLUICE_INSTANCE_ID": instance_id,
    }
    if code is not None:
        env["AML_APP_ROOT"] = str(code)
        env["AZUREML_SOURCE_DIRECTORY"] = str(code)
    if scoring_script:
        env["AZUREML_ENTRY_SCRIPT"] = scoring_script
    return env


def spare_env() -> dict[str, str]:
    """The environment a spare process starts with (it becomes an instance later)."""
    return {"PATH": BASE_PATH, "LANG": "C.UTF-8", "HOME": "/nonexistent"}


# ---- files ---------------------------------------------------------------------------------


def harden_state_dir(state_dir: Path) -> None:
    """State dir 0711, its entries private to the platform user except the shared ones."""
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o711)
    for entry in state_dir.iterdir():
        if entry.name in SHARED_ENTRIES or entry.is_symlink():
            continue
        entry.chmod(0o700 if entry.is_dir() else 0o600)


def reachable_by_others(path: Path) -> Path | None:
    """The first folder on the way to `path` that other users cannot traverse, or None."""
    for folder in [*reversed(path.absolute().parents), path]:
        if folder.exists() and not folder.stat().st_mode & stat.S_IXOTH:
            return folder
    return None


def private_copy(source: Path, target: Path, account: Account) -> Path:
    """Copy an artifact to `target`, owned by `account` and readable only by it.

    Symbolic links are copied as links and refused when they lead out of `source`:
    followed by the instance they would reach the platform's files (all of them when
    the platform does not run as root, so instances share its user). The artifact
    store already refuses such links at upload; this holds for any other source."""
    if target.exists():
        return target
    _refuse_links_out_of(source)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, mode=0o700)
    copied = partial / source.name
    if source.is_dir():
        shutil.copytree(source, copied, symlinks=True)
    else:
        shutil.copy2(source, copied)
    _own_privately(partial, account)
    partial.rename(target)
    return target


def _refuse_links_out_of(source: Path) -> None:
    root = (source if source.is_dir() else source.parent).resolve()
    links = [source] if source.is_symlink() else []
    for dirpath, dirnames, filenames in os.walk(source):
        links += [Path(dirpath) / name for name in (*dirnames, *filenames)]
    for link in links:
        if link.is_symlink() and not link.resolve().is_relative_to(root):
            where = link.relative_to(source.parent)
            raise IsolationError(f"{where} links outside {source.name}: it is not copied")


def _own_privately(tree: Path, account: Account) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        here = Path(dirpath)
        _chown(here, account)
        here.chmod(0o700)
        for name in dirnames:
            if (here / name).is_symlink():
                _chown(here / name, account)
        for name in filenames:
            file = here / name
            _chown(file, account)
            if not file.is_symlink():
                file.chmod(0o500 if file.stat().st_mode & stat.S_IXUSR else 0o400)


def _chown(path: Path, account: Account) -> None:
    if account.switches:
        os.lchown(path, account.uid, account.gid)


def collector_folder(state_dir: Path, endpoint: str, deployment: str, account: Account) -> Path:
    """The deployment's data collector folder: only its user (and the platform) may enter it.

    Every folder on the way is traversable, not listable (0711); the datastore's other
    entries (batch outputs, other datastores) are made private to the platform's user.
    """
    folder = deployment_folder(state_dir, collected_dir(state_dir, endpoint, deployment), account)
    for parent, keep in (
        (state_dir / DATASTORE, DEFAULT_DATASTORE),
        (state_dir / DATASTORE / DEFAULT_DATASTORE, COLLECTOR_PATH),
    ):
        for entry in parent.iterdir():
            if entry.name != keep and not entry.is_symlink():
                entry.chmod(0o700 if entry.is_dir() else 0o600)
    return folder


def traces_folder(state_dir: Path, endpoint: str, deployment: str, account: Account) -> Path:
    """Where the deployment's inference servers write spans (`<state>/traces/instances/...`);
    the platform's own spans (`traces/platform`) stay private."""
    folder = deployment_folder(state_dir, instance_folder(state_dir, endpoint, deployment), account)
    platform = platform_folder(state_dir)
    platform.mkdir(exist_ok=True)
    platform.chmod(0o700)
    return folder


def deployment_folder(state_dir: Path, folder: Path, account: Account) -> Path:
    """`folder` (under the state dir) private to `account`; the folders on the way 0711."""
    for step in reversed(folder.parents):
        if step.is_relative_to(state_dir) and step != state_dir:
            step.mkdir(exist_ok=True)
            step.chmod(0o711)
    return make_private_dir(folder, account)


def make_private_dir(path: Path, account: Account) -> Path:
    """`path` a folder of `account`'s, 0700."""
    owner = (account.uid, account.gid) if account.switches else None
    return _own_dir(path, owner, 0o700)


def make_platform_dir(path: Path) -> Path:
    """`path` a folder of the platform's that others may traverse, not list or change
    (0711): a deployment's workspace and its folders of copies. Its user owns only what
    is inside (HOME, the copies), so it cannot put a symbolic link where root will work."""
    return _own_dir(path, (os.getuid(), os.getgid()), 0o711)


def _own_dir(path: Path, owner: tuple[int, int] | None, mode: int) -> Path:
    """Create `path` if needed and give it to `owner` (uid, gid; None: leave it) with `mode`,
    through a descriptor opened without following a link: a deployment's code may have
    put one in its place for root to follow (chmod and chown would act on its target)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(parents=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:  # ELOOP: a link; ENOTDIR: a file
        raise IsolationError(f"{path} is not a folder (a link or a file): refused") from exc
    try:
        seen = os.fstat(fd)
        if owner is not None and (seen.st_uid, seen.st_gid) != owner:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return path
