"""Unit tests of what isolation.py promises (the attack itself: tests/security)."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from sluice.common.interpreters import Interpreter, for_deployment_users, runnable_by_others
from sluice.common.isolation import (
    Account,
    IsolationError,
    account_for,
    collector_folder,
    harden_state_dir,
    instance_env,
    make_platform_dir,
    make_private_dir,
    private_copy,
    reachable_by_others,
    remove_account,
    user_name,
)
from sluice.common.resources import OnlineDeploymentSpec
from sluice.provisioner.local import LocalBackend
from sluice.provisioner.spares import spare_key
from sluice.testing.plugin import traversable_dir
from sluice.testing.wait import wait_for


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_instance_environment_holds_nothing_of_the_platforms(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", "platform-secret")
    spec = OnlineDeploymentSpec(
        name="blue", endpoint_name="ep", environment_variables={"MY_SETTING": "1"}
    )
    env = instance_env(spec, "i1", "/envs/x/bin/python", tmp_path, tmp_path / "code", "score.py")
    assert "platform-secret" not in env.values()
    assert {k for k in env if k.startswith("SLUICE_")} == {"SLUICE_INSTANCE_ID"}
    assert env["MY_SETTING"] == "1"
    assert env["AZUREML_ENTRY_SCRIPT"] == "score.py"
    assert env["HOME"] == str(tmp_path)
    assert env["PATH"].startswith("/envs/x/bin:")


def test_state_dir_is_private_except_shared_folders(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "tls").mkdir(parents=True)
    (state / "envs").mkdir()
    (state / "admin-token").write_text("x")
    (state / "admin-token").chmod(0o644)
    harden_state_dir(state)
    assert mode(state) == 0o711
    assert mode(state / "tls") == 0o700
    assert mode(state / "admin-token") == 0o600
    assert mode(state / "envs") == 0o755


def test_private_copy_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    source = tmp_path / "model"
    source.mkdir()
    (source / "weights.bin").write_text("w")
    (source / "weights.bin").chmod(0o644)
    me = Account("me", os.geteuid(), os.getegid())
    target = private_copy(source, tmp_path / "copy", me)
    assert mode(target) == 0o700
    assert mode(target / "model") == 0o700
    assert mode(target / "model" / "weights.bin") == 0o400
    assert private_copy(source, tmp_path / "copy", me) == target  # copied once


def test_private_copy_refuses_links_out_of_the_folder(tmp_path: Path) -> None:
    secret = tmp_path / "secret.key"
    secret.write_text("platform secret")
    source = tmp_path / "code"
    (source / "sub").mkdir(parents=True)
    (source / "score.py").write_text("def run(x): return x")
    (source / "sub" / "alias.py").symlink_to(source / "score.py")  # inside: copied as a link
    me = Account("me", os.geteuid(), os.getegid())
    copied = private_copy(source, tmp_path / "ok", me)
    assert (copied / "code" / "sub" / "alias.py").is_symlink()
    (source / "sub" / "key").symlink_to(secret)
    with pytest.raises(IsolationError, match=r"code/sub/key links outside code"):
        private_copy(source, tmp_path / "refused", me)
    assert not (tmp_path / "refused").exists()


def test_folders_root_works_in_are_never_followed_through_a_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    me = Account("me", os.geteuid(), os.getegid())
    for make in (lambda p: make_private_dir(p, me), make_platform_dir):
        planted = tmp_path / "workspace" / "artifacts"
        planted.parent.mkdir(exist_ok=True)
        planted.symlink_to(target)
        with pytest.raises(IsolationError, match="not a folder"):
            make(planted)
        assert mode(target) == 0o755  # chmod did not reach through the link
        planted.unlink()
    assert mode(make_platform_dir(tmp_path / "workspace")) == 0o711
    assert mode(make_private_dir(tmp_path / "workspace" / "home", me)) == 0o700


def test_a_private_folder_on_the_way_is_named() -> None:
    with traversable_dir("sluice-unit-") as root:
        private = root / "private"
        (private / "inner").mkdir(parents=True)
        private.chmod(0o700)
        assert reachable_by_others(private / "inner") == private
        private.chmod(0o711)
        assert reachable_by_others(private / "inner") is None


def test_user_names_are_short_and_stable() -> None:
    name = user_name("endpoint-with-a-long-name", "deployment")
    assert name == user_name("endpoint-with-a-long-name", "deployment")
    assert name != user_name("endpoint-with-a-long-name", "other")
    assert len(name) <= 32  # useradd's limit


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="deployment users exist only as root")
def test_a_group_left_without_its_user_neither_blocks_the_user_nor_outlives_it() -> None:
    """useradd or userdel killed halfway can leave the group behind: `useradd --user-group`
    then refuses the name for good, and every later deployment of that name failed."""
    endpoint, deployment = "isolation-unit", f"orphan-{os.getpid()}"
    name = user_name(endpoint, deployment)

    def shadow(tool: str, check: bool = True) -> None:  # groupadd, userdel, groupdel
        path = shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")
        assert path is not None, tool
        subprocess.run([path, name], check=check, capture_output=True)

    shadow("groupadd")
    try:
        account = account_for(endpoint, deployment)
        assert account.name == name
        assert grp.getgrgid(account.gid).gr_name == name  # its own group, reused
        remove_account(endpoint, deployment)
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
        with pytest.raises(KeyError):
            grp.getgrnam(name)
        # Left behind again (user gone, group kept): removing cleans the group up too.
        shadow("groupadd")
        remove_account(endpoint, deployment)
        with pytest.raises(KeyError):
            grp.getgrnam(name)
    finally:
        shadow("userdel", check=False)
        shadow("groupdel", check=False)


def test_deployment_users_get_an_interpreter_they_can_run(tmp_path: Path) -> None:
    private = tmp_path / "home"
    (private / "bin").mkdir(parents=True)
    own = private / "bin" / "python3.11"
    own.write_text("")
    own.chmod(0o755)
    private.chmod(0o700)
    assert not runnable_by_others(str(own))
    platform = Interpreter(str(own), Version("3.11.7"))
    system = Interpreter("/bin/sh", Version("3.11.2"))
    chosen, usable = for_deployment_users(platform, [platform, system])
    if os.geteuid() == 0:
        assert chosen == system and usable == [system]
    else:
        assert chosen == platform


def test_collector_folder_is_reachable_only_on_the_way(tmp_path: Path) -> None:
    state = tmp_path / "state"
    outputs = state / "datastore" / "workspaceblobstore" / "azureml" / "job-1"
    outputs.mkdir(parents=True)
    me = Account("me", os.geteuid(), os.getegid())
    folder = collector_folder(state, "ep", "blue", me)
    assert folder == state / "datastore/workspaceblobstore/modelDataCollector/ep/blue"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for step in folder.relative_to(state).parents:
        if step != Path():
            assert stat.S_IMODE((state / step).stat().st_mode) == 0o711, step
    # Batch outputs beside it stay private to the platform's user.
    assert stat.S_IMODE(outputs.parent.stat().st_mode) == 0o700


def test_app_insights_enabled_traces_one_deployment(tmp_path: Path) -> None:
    from sluice.common.settings import TracingSettings
    from sluice.provisioner.local import LocalBackend

    off = LocalBackend(tmp_path / "logs", state_dir=tmp_path, tracing=TracingSettings())
    spec = OnlineDeploymentSpec(name="blue", endpoint_name="ep")
    assert off._tracing_argv(spec) == []  # the platform does not trace: nothing to pay
    argv = off._tracing_argv(spec.model_copy(update={"app_insights_enabled": True}))
    assert argv[argv.index("--trace-dir") + 1] == str(tmp_path / "traces/instances/ep/blue")
    on = LocalBackend(
        tmp_path / "logs",
        state_dir=tmp_path,
        tracing=TracingSettings(enabled=True, sampling_ratio=0.5, otlp_endpoint="http://c:4317"),
    )
    argv = on._tracing_argv(spec)
    assert argv[argv.index("--trace-sampling-ratio") + 1] == "0.5"
    assert argv[argv.index("--trace-otlp-endpoint") + 1] == "http://c:4317"


PTH = "import os; open({drop!r}, 'w').write(str(os.getuid()))\n"


@pytest.mark.integration  # starts spares
@pytest.mark.skipif(os.geteuid() != 0, reason="spares start as the platform's user: root")
@pytest.mark.parametrize("requirements", ["", "evil==1\n"])
def test_as_root_no_spare_imports_a_deployers_packages(requirements: str, tmp_path: Path) -> None:
    """A shared spare starts as root and imports from its environment (a `.pth` file runs at
    start): an environment with a deployer's packages gets none, its instances start cold as their
    deployment's user (or from a spare of that deployment's own, started as its user: tried
    by tests/test_provisioner.py); the platform's stand-in (no requirement) keeps its
    shared spare."""
    venv = tmp_path / "env"
    subprocess.run(
        [uv_binary(), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True
    )
    drop = tmp_path / "ran-as"
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "zz_evil.pth").write_text(PTH.format(drop=str(drop)))
    (venv / ".ready").write_text(requirements)
    backend = LocalBackend(tmp_path / "instances", state_dir=tmp_path)
    try:
        backend.warm_up(str(venv / "bin" / "python"))
        if requirements:
            assert spare_key(str(venv / "bin" / "python")) is None  # no shared spare
            assert not drop.exists()
        else:  # the control: a spare started, as root, and ran the environment's .pth
            wait_for(drop.exists, "the spare to start", deadline=60)
            assert drop.read_text() == "0"
    finally:
        asyncio.run(backend.close())


def uv_binary() -> str:
    from uv import find_uv_bin

    return str(find_uv_bin())
