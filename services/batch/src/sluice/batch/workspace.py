"""Who a batch job's workers run as, and the files they may touch.

A batch deployment's `run(mini_batch)` is somebody else's code, as an online
deployment's `score.py` is, and gets the same treatment
(`sluice.common.isolation`): when the platform runs as root, its workers run
as a user of its own (`sluice-d-<hash of "batch:<endpoint>"/<deployment>>`,
distinct from an online deployment of the same names), which can read none of
the state directory's secrets. That user gets, per job,
`<state>/batch-workspaces/jobs/<job>/` (0711, the platform's): private copies of the
deployment's model and code and of the job's input files, its HOME/TMPDIR,
`parts/`, where its workers write their results, and for a summary_only job
`output/` (AZUREML_BI_OUTPUT_PATH), whose plain files the runner copies to the
job's output folder when the job ends (`output.publish_files`). Spares of that user wait
in `<state>/batch-workspaces/spares/<user>/`.

The runner (root) reads the parts back with `output.open_part`, which follows
no link: the folder is the deployment's, and a part replaced by a link to the
admin token must not end up in the job's output. Worker logs stay in the
runner's own folder (`<state>/jobs/<job>/logs/`): the runner opens them and
gives the worker the open file.

Run as any other user, the platform cannot switch users: workers run as it,
in `<state>/jobs/<job>/`, reading the artifacts and inputs where they are.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sluice.batch.inputs import InputError, check_under
from sluice.common.isolation import (
    Account,
    IsolationError,
    account_for,
    deployment_folder,
    harden_state_dir,
    isolating,
    make_platform_dir,
    make_private_dir,
    private_copy,
    reachable_by_others,
    remove_account,
    user_name,
)
from sluice.common.untrusted import NotAPlainFile, open_plain

WORKSPACES = "batch-workspaces"  # in the state directory; shared (0711) like `workspaces`


def batch_account(endpoint: str, deployment: str) -> Account:
    """The batch deployment's own user as root (created on first use), else the platform's."""
    return account_for(f"batch:{endpoint}", deployment)


@dataclass(frozen=True)
class JobSpace:
    """Where one job's workers live: who they are, HOME, the parts folder, private copies."""

    account: Account
    folder: Path
    home: Path
    parts: Path

    @property
    def output(self) -> Path:
        """Where a summary_only job's workers write their own files (AZUREML_BI_OUTPUT_PATH);
        the runner copies them to the job's output folder when the job ends."""
        return self.folder / "output"

    def make_output(self) -> Path:
        """`output`, the workers' own (0700) as root; blocking."""
        if self.account.switches:
            return make_private_dir(self.output, self.account)
        self.output.mkdir(parents=True, exist_ok=True)
        return self.output

    def copy_artifact(self, source: Path) -> Path:
        """`source` (`<artifacts>/<digest>/<name>`) as the workers see it."""
        if not self.account.switches:
            return source
        copies = make_platform_dir(self.folder / "artifacts")
        return private_copy(source, copies / source.parent.name, self.account) / source.name

    def copy_inputs(self, files: list[str], roots: Sequence[Path]) -> list[str]:
        """The job's input files as the workers see them: private copies, each in a folder of
        its own (`inputs/<n>/<name>`, so names stay as given and never collide). Each is
        read where it resolves now, if that is still under `roots` (invoke checked them),
        through no link (`open_plain_file`): an input may lie in a folder a deployment's
        code writes (its data collector's), which could swap a folder on the way for a
        link to the platform's secrets between invoke and this copy."""
        if not self.account.switches:
            return files
        inputs = make_platform_dir(self.folder / "inputs")
        copies = []
        for n, file in enumerate(files):
            name = Path(file).name
            target = inputs / str(n)
            if not target.exists():
                try:
                    real = check_under(Path(file), roots, "input file")
                except InputError as exc:  # it resolves elsewhere since invoke
                    raise IsolationError(str(exc)) from None
                _copy_privately(open_plain_file(real), name, target, self.account)
            copies.append(str(target / name))
        return copies

    def remove(self) -> None:
        """Drop the copies and parts once the job's output is written (the runner's own
        folder when not switching users is kept, as before)."""
        if self.account.switches:
            shutil.rmtree(self.folder, ignore_errors=True)


def open_plain_file(path: Path) -> BinaryIO:
    """`path` (absolute, links resolved) opened for reading one folder at a time, following
    no link on the way: IsolationError if one appeared since it was resolved, or if it is
    not a plain file (a FIFO would block the runner, a device never end)."""
    parts = path.parts
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[1:-1]:
            step = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = step
        return open_plain(parts[-1], dir_fd=fd)
    except NotAPlainFile:
        raise IsolationError(f"input {path} is not a plain file") from None
    except OSError as exc:
        raise IsolationError(f"input {path} is not read through a link: {exc}") from None
    finally:
        os.close(fd)


def _copy_privately(source: BinaryIO, name: str, target: Path, account: Account) -> None:
    """`source` copied to `target/name`, `target` private to `account`."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with source:
        make_platform_dir(partial)
        fd = os.open(partial / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    os.chown(partial / name, account.uid, account.gid)
    make_private_dir(partial, account)
    partial.rename(target)


def job_space(state_dir: Path, job: str, job_dir: Path, account: Account) -> JobSpace:
    """The job's workspace for `account`; IsolationError when its user could not reach it.

    Blocking (creates folders): call it from a thread."""
    if not account.switches:
        return JobSpace(account, job_dir, job_dir, job_dir / "parts")
    harden_state_dir(state_dir)
    folder = state_dir / WORKSPACES / "jobs" / job
    _check_reachable(folder.parent.parent)
    for step in (folder.parent.parent, folder.parent, folder):  # the user owns only inside
        make_platform_dir(step)
    home = make_private_dir(folder / "home", account)
    parts = make_private_dir(folder / "parts", account)
    return JobSpace(account, folder, home, parts)


def existing_account(endpoint: str, deployment: str) -> Account | None:
    """The batch deployment's own user if it exists (never created here), as root."""
    if not isolating():
        return None
    try:
        entry = pwd.getpwnam(user_name(f"batch:{endpoint}", deployment))
    except KeyError:
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def remove_deployment(state_dir: Path, endpoint: str, deployment: str) -> Account | None:
    """A deleted batch deployment's spares folder and user (its spares stopped first);
    the account that was removed, if any. A user whose processes still run (a job's
    workers, stopped when the job sees the deployment gone) is kept: userdel refuses."""
    account = existing_account(endpoint, deployment)
    if account is None:
        return None
    shutil.rmtree(state_dir / WORKSPACES / "spares" / account.name, ignore_errors=True)
    remove_account(f"batch:{endpoint}", deployment)
    return account


def spare_home(state_dir: Path, account: Account) -> Path:
    """HOME and working folder of `account`'s spares (0700, its own)."""
    harden_state_dir(state_dir)
    folder = state_dir / WORKSPACES / "spares" / account.name
    _check_reachable(folder.parent.parent)
    return deployment_folder(state_dir, folder, account)


def _check_reachable(root: Path) -> None:
    blocked = reachable_by_others(root.parent)
    if blocked is not None:
        raise IsolationError(
            f"the batch deployment's user cannot reach {root}: {blocked} is private "
            "(chmod o+x it, or put the state directory somewhere traversable)"
        )
