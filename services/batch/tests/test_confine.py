"""confine.py: a batch worker's Landlock sandbox, tried with real processes on this kernel.

The launcher runs as a runner starts it (the environment's interpreter, `-I -S`, the spec
on stdin); the program it executes then tries what deployment code sharing the batch
service's uid would: read a file that uid owns outside the sandbox, write its parts,
signal the service, and run code before the worker starts (a PYTHONPATH sitecustomize).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.batch.runner import sandbox
from sluice.batch.workspace import JobSpace
from sluice.common import confine, interpreters
from sluice.common.isolation import Account
from sluice.testing.plugin import traversable_dir

pytestmark = pytest.mark.integration  # starts processes

PROBE = """\
import json, os, sys
found = {}
for name in ("secret", "input"):
    try:
        with open(os.environ["PROBE_" + name.upper()]) as f:
            found[name] = f.read().strip()
    except OSError as exc:
        found[name] = type(exc).__name__
try:
    with open(os.path.join(os.environ["PROBE_PARTS"], "part-0"), "w") as f:
        f.write("rows")
    found["write"] = "ok"
except OSError as exc:
    found["write"] = type(exc).__name__
try:
    os.kill(os.getppid(), 0)  # the process that started it (the runner, in a job)
    found["signal"] = "ok"
except OSError as exc:
    found["signal"] = type(exc).__name__
print(json.dumps(found), flush=True)
"""


needs_landlock = pytest.mark.skipif(confine.kernel_abi() < 1, reason="this kernel has no Landlock")


def layout(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A secret the uid owns (as the batch service's NATS password file), a job's input,
    its parts folder and HOME."""
    (tmp_path / "secrets").mkdir()
    secret = tmp_path / "secrets" / "password"
    secret.write_text("nats-password")
    (tmp_path / "inputs").mkdir()
    data = tmp_path / "inputs" / "f0.csv"
    data.write_text("x\n1\n")
    for folder in ("parts", "home"):
        (tmp_path / folder).mkdir()
    return secret, data, tmp_path / "parts", tmp_path / "home"


def run_confined(
    spec: dict[str, list[str]], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        confine.command(sys.executable),
        input=json.dumps(spec),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_landlock
def test_a_confined_program_reads_its_job_and_nothing_else_its_uid_can(tmp_path: Path) -> None:
    secret, data, parts, home = layout(tmp_path)
    script = tmp_path / "inputs" / "probe.py"  # where the sandbox lets it be read
    script.write_text(PROBE)
    env = {
        "PROBE_SECRET": str(secret),
        "PROBE_INPUT": str(data),
        "PROBE_PARTS": str(parts),
        "PATH": "/usr/bin:/bin",
    }
    space = JobSpace(Account("me", os.getuid(), os.getgid()), tmp_path, home, parts)
    paths = sandbox(space, sys.executable, None, None, [str(data), str(script)])
    assert str(secret) not in paths["read"] and paths["write"] == [str(home), str(parts)]
    result = run_confined({**paths, "argv": [sys.executable, str(script)]}, env)
    assert result.returncode == 0, result.stdout + result.stderr
    first, report = result.stdout.splitlines()
    assert first.startswith("confined with Landlock (ABI ")
    found = json.loads(report)
    assert found["secret"] == "PermissionError"  # the uid's own file, outside the sandbox
    assert found["input"] == "x\n1"
    assert found["write"] == "ok" and (parts / "part-0").read_text() == "rows"
    if confine.kernel_abi() >= 6:  # signals scoped to the sandbox
        assert found["signal"] == "PermissionError"
    # The control: unconfined, the same program reads the secret.
    bare = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert json.loads(bare.stdout)["secret"] == "nats-password"


@needs_landlock
def test_code_the_deployment_runs_at_interpreter_start_is_already_confined(
    tmp_path: Path,
) -> None:
    """A deployment's PYTHONPATH (its environment_variables) with a sitecustomize runs before
    the worker's first line: confine.py itself ignores it (-I -S), the worker does not."""
    secret, _, parts, home = layout(tmp_path)
    (tmp_path / "inputs" / "sitecustomize.py").write_text(
        "import os\n"
        "try:\n"
        "    print('early:', open(os.environ['PROBE_SECRET']).read(), flush=True)\n"
        "except OSError as exc:\n"
        "    print('early:', type(exc).__name__, flush=True)\n"
    )
    space = JobSpace(Account("me", os.getuid(), os.getgid()), tmp_path, home, parts)
    paths = sandbox(space, sys.executable, None, None, [str(tmp_path / "inputs")])
    env = {"PYTHONPATH": str(tmp_path / "inputs"), "PROBE_SECRET": str(secret)}
    result = run_confined({**paths, "argv": [sys.executable, "-c", "pass"]}, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"confined with Landlock (ABI {confine.kernel_abi()})",
        "early: PermissionError",
    ]


def test_a_sandbox_that_cannot_be_made_fails_the_worker_with_the_reason(tmp_path: Path) -> None:
    """Whatever stops the sandbox (no Landlock in this kernel, a path it cannot open: here a
    symbolic link loop) ends the launcher with the runner's init-failed code and the way
    out, and the worker's command never runs unconfined."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    marker = tmp_path / "ran"
    spec = {"read": [str(loop)], "write": [], "argv": ["/usr/bin/touch", str(marker)]}
    result = run_confined(spec, {})
    assert (result.returncode, result.stderr) == (confine.EXIT_NO_LANDLOCK, ""), result
    assert "cannot be confined" in result.stdout
    assert "SLUICE_LANDLOCK=false" in result.stdout
    assert not marker.exists()


READ_ENVIRON = """\
import sys
try:
    with open(f"/proc/{sys.argv[1]}/environ", "rb") as f:
        print("read" if b"VICTIM_SECRET=" in f.read() else "other")
except OSError as exc:
    print(type(exc).__name__)
"""


@needs_landlock
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run both sides as another user")
def test_a_confined_process_cannot_read_another_processes_environment() -> None:
    """`/proc` is readable in the sandbox, but not another process's environ of the same uid
    (another instance's gateway secret, another job's worker's configuration): Landlock
    refuses ptrace-mode access to processes outside the sandbox. Both sides run as
    `nobody`, without CAP_SYS_PTRACE (which Landlock lets through)."""
    nobody = {"user": 65534, "group": 65534, "extra_groups": []}
    python = next(
        (i.path for i in interpreters.discover() if interpreters.runnable_by_others(i.path)), None
    )
    if python is None:
        pytest.skip("no Python here that another user may run")
    victim = subprocess.Popen(
        ["/bin/sleep", "60"], env={"VICTIM_SECRET": "gateway-secret"}, **nobody
    )
    try:
        with traversable_dir("sluice-confine-") as folder:
            script = folder / "read_environ.py"
            script.write_text(READ_ENVIRON)
            script.chmod(0o644)
            argv = [python, str(script), str(victim.pid)]
            bare = subprocess.run(argv, capture_output=True, text=True, timeout=60, **nobody)
            assert bare.stdout.strip() == "read", bare  # the control: same uid, dumpable
            spec = {"read": [str(folder), *sandbox_paths(python)], "write": [], "argv": argv}
            confined = subprocess.run(
                confine.command(python),
                input=json.dumps(spec),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                **nobody,
            )
        assert confined.stdout.splitlines()[-1] == "PermissionError", confined
    finally:
        victim.kill()
        victim.wait()


def sandbox_paths(python: str) -> list[str]:
    return sorted(confine.platform_paths(python))
