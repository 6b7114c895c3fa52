"""Environment specs -> pip requirements, and the instance-type catalogue."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from packaging.version import Version

from sluice.common import interpreters
from sluice.common.catalogue import Catalogue, UnknownInstanceType
from sluice.common.environments import (
    Environment,
    EnvironmentBuilder,
    EnvironmentError_,
    ResolvedEnvironment,
    resolve,
)
from sluice.common.interpreters import Interpreter, choose, server_digest, sources_digest
from sluice.common.platform_link import PTH
from sluice.common.resources import EnvironmentSpec
from sluice.common.supervisor import free_port
from sluice.testing.plugin import traversable_dir
from sluice.testing.wait import wait_for

CONDA = """
name: model-env
dependencies:
  - python=3.8
  - numpy=1.26
  - pip
  - pip:
      - scikit-learn==1.5.2
      - azureml-defaults
      - joblib
"""


def test_conda_file_becomes_sorted_pip_requirements_with_warnings() -> None:
    resolved = resolve(EnvironmentSpec(conda_file=CONDA, image="mcr.microsoft.com/x:latest"))
    assert resolved.requirements == ("joblib", "numpy==1.26.*", "scikit-learn==1.5.2")
    text = "\n".join(resolved.warnings)
    assert "conda asks for python==3.8.*;" in text
    assert f"instances run Python {interpreters.platform_interpreter().version}" in text
    assert "'azureml-defaults' is not installed: Sluice's inference server replaces it" in text
    assert "installed from PyPI: numpy=1.26 -> numpy==1.26.*" in text
    assert "image 'mcr.microsoft.com/x:latest' is ignored" in text


def test_same_requirements_share_one_environment() -> None:
    a = resolve(EnvironmentSpec(pip_requirements=("joblib", "scikit-learn")))
    b = resolve(
        EnvironmentSpec(conda_file="dependencies:\n  - pip:\n    - scikit-learn\n    - joblib\n")
    )
    assert a.key == b.key
    assert resolve(EnvironmentSpec(pip_requirements=("joblib",))).key != a.key


def test_an_environment_of_another_minor_is_keyed_by_the_server_it_holds(tmp_path: Path) -> None:
    """Such an environment holds a copy of the inference server: after the platform is
    updated (git pull) it is built anew, not kept running the old server. An environment of
    the platform's minor imports the platform's own server and keeps its key."""
    project = tmp_path / "inference"
    (project / "src" / "pkg" / "__pycache__").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'pkg'\n")
    module = project / "src" / "pkg" / "server.py"
    module.write_text("A = 1\n")
    before = sources_digest([str(project)])
    (project / "src" / "pkg" / "__pycache__" / "server.cpython-311.pyc").write_bytes(b"\0")
    (project / "tests").mkdir()
    (project / "tests" / "test_server.py").write_text("def test(): pass\n")
    assert sources_digest([str(project)]) == before  # bytecode and tests are not the server
    module.write_text("A = 2\n")
    assert sources_digest([str(project)]) != before

    def key(*lines: str) -> str:
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]

    platform = interpreters.platform_interpreter()
    other = Interpreter("/opt/python3.9/bin/python3.9", Version("3.9.18"))
    assert other.minor != platform.minor
    own = ResolvedEnvironment(("joblib",), platform)
    foreign = ResolvedEnvironment(("joblib",), other)
    assert own.key == key(f"python={platform.version}", "joblib")
    assert foreign.key == key("python=3.9.18", "joblib", f"server={server_digest()}")
    assert server_digest() == sources_digest(interpreters.server_sources() or [])


# Azure's inference-schema sample (env.yml), less the runtime Sluice replaces: scikit-learn
# pinned to a release built against NumPy 1.x, numpy left to the installer.
OLD_SKLEARN = """
name: amlex-infschema
channels:
  - conda-forge
dependencies:
  - python=3.11
  - scikit-learn=1.2.2
  - numpy
  - pandas
  - pip:
    - joblib
"""


def test_a_release_built_against_numpy_1_gets_numpy_below_2_as_a_constraint() -> None:
    """Conda would install NumPy 1.x beside scikit-learn 1.2.2 (its build says numpy<2);
    PyPI's wheel says only numpy>=1.17.3, so uv would pick NumPy 2 and init() would fail."""
    resolved = resolve(EnvironmentSpec(conda_file=OLD_SKLEARN))
    assert resolved.constraints == ("numpy<2",)
    assert "numpy<2" not in resolved.requirements  # a bound, not a package they asked for
    assert "numpy<2: scikit-learn 1.2.2 predates its NumPy 2 build (1.4.2)" in resolved.warnings[-1]
    unconstrained = ResolvedEnvironment(resolved.requirements, resolved.interpreter)
    assert resolved.key != unconstrained.key  # one built before this cannot be reused


@pytest.mark.parametrize(
    "pip",
    [
        ("scikit-learn==1.2.2", "numpy==2.0.2"),  # the user's numpy pin is never overridden
        ("scikit-learn==1.5.2",),
        ("scikit-learn>=1.0",),
        ("scikit-learn", "numpy"),
    ],
)
def test_no_constraint_without_an_old_pin_or_with_a_numpy_pin(pip: tuple[str, ...]) -> None:
    resolved = resolve(EnvironmentSpec(pip_requirements=pip))
    assert resolved.constraints == ()
    assert not any("numpy<2" in w for w in resolved.warnings)
    # Environments without constraints keep the keys they were built under.
    assert resolved.key == ResolvedEnvironment(resolved.requirements, resolved.interpreter).key


def test_no_requirements_means_the_platform_environment() -> None:
    assert resolve(EnvironmentSpec()).requirements == ()
    ours = f"python={sys.version_info[0]}.{sys.version_info[1]}"
    assert not resolve(EnvironmentSpec(conda_file=f"dependencies:\n  - {ours}\n")).warnings


PLATFORM = Interpreter("/venv/bin/python", Version("3.11.7"))
MACHINE = [
    Interpreter("/usr/bin/python3.11", Version("3.11.2")),
    Interpreter("/opt/py/3.12/bin/python3.12", Version("3.12.1")),
    Interpreter("/opt/py/3.8/bin/python3.8", Version("3.8.18")),
]


@pytest.mark.parametrize(
    ("specifier", "path", "warning"),
    [
        ("", "/venv/bin/python", ""),
        ("==3.11.*", "/venv/bin/python", ""),
        (">=3.9", "/venv/bin/python", ""),
        ("==3.11.2.*", "/usr/bin/python3.11", ""),  # same minor: honoured
        ("==3.8.*", "/venv/bin/python", "Python 3.8.18 is on this machine, but the inference"),
        ("==3.7.*", "/venv/bin/python", "no such interpreter is on this machine"),
    ],
)
def test_python_request_honoured_when_an_interpreter_fits(
    specifier: str, path: str, warning: str
) -> None:
    choice = choose(specifier, MACHINE, PLATFORM)
    assert choice.interpreter.path == path
    assert warning in choice.warning and bool(choice.warning) == bool(warning)


@pytest.mark.parametrize(
    ("specifier", "path", "warning"),
    [
        ("==3.12.*", "/opt/py/3.12/bin/python3.12", ""),  # another minor: its own server
        (">=3.12", "/opt/py/3.12/bin/python3.12", ""),
        ("==3.8.*", "/venv/bin/python", "the inference server needs 3.11+"),
        ("==3.13.*", "/venv/bin/python", "no such interpreter is on this machine"),
    ],
)
def test_another_minor_is_honoured_when_the_server_can_be_installed(
    specifier: str, path: str, warning: str
) -> None:
    choice = choose(specifier, MACHINE, PLATFORM, other_minors=True)
    assert choice.interpreter.path == path
    assert warning in choice.warning and bool(choice.warning) == bool(warning)
    refused = choose("==3.12.*", MACHINE, PLATFORM)  # the platform not run from its sources
    assert "cannot be installed for it" in refused.warning


def test_the_server_installs_from_this_checkout() -> None:
    sources = interpreters.server_sources()
    assert sources is not None and any(s.endswith("services/inference") for s in sources)


def _other_minor() -> Interpreter | None:
    """The newest Python of another minor; as root, one the build user may run if any."""
    platform = interpreters.platform_interpreter()
    others = [
        i
        for i in interpreters.discover()
        if i.minor != platform.minor and i.version >= interpreters.SERVER_MINIMUM
    ]
    shared = [i for i in others if interpreters.runnable_by_others(i.path)]
    if os.geteuid() == 0 and shared:
        others = shared
    return max(others, key=lambda i: i.version) if others else None


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_an_environment_of_another_minor_runs_its_own_inference_server(tmp_path: Path) -> None:
    """python=3.12 (or whichever other minor is here): built with that interpreter and the
    server installed from its sources; a scoring script then answers from that Python."""
    other = _other_minor()
    if other is None:
        pytest.skip("no Python >= 3.11 of another minor on this machine")
    if os.geteuid() == 0 and not interpreters.runnable_by_others(other.path):
        pytest.skip(f"as root builds run as a user of their own, who cannot run {other.path}")
    minor = f"{other.version.major}.{other.version.minor}"
    builder = EnvironmentBuilder(tmp_path / "envs", available=[other])
    resolved = ResolvedEnvironment((), other)
    assert resolved.foreign
    asyncio.run(builder._build(tmp_path / "envs" / resolved.key, resolved))
    python = tmp_path / "envs" / resolved.key / "bin" / "python"
    assert not interpreters.platform_minor(str(python))  # no spare for it
    assert not list((tmp_path / "envs").glob("*/lib/*/site-packages/zz_sluice_platform.pth"))
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(
        "import sys\ndef init():\n    pass\ndef run(raw):\n    return sys.version\n"
    )
    port = free_port()
    server = subprocess.Popen(
        [str(python), "-m", "sluice.inference", "--code", str(code), "--scoring-script",
         "score.py", "--port", str(port), "--grpc-port", str(free_port())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def answered() -> str | None:
            try:
                reply = httpx.post(f"http://127.0.0.1:{port}/score", content=b"{}", timeout=2)
            except httpx.HTTPError:
                return None
            return str(reply.json()) if reply.status_code == 200 else None

        version = wait_for(answered, "the server of the other minor to answer", deadline=60)
        assert version.startswith(f"{minor}.")
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.integration  # discovers interpreters: starts processes
def test_as_root_a_private_interpreter_is_named_in_the_warning() -> None:
    """As root the deployments run as users of their own, who cannot run /root/.pyenv's."""
    other = _other_minor()
    if other is None or os.geteuid() != 0 or interpreters.runnable_by_others(other.path):
        pytest.skip("needs root and a private interpreter of another minor")
    minor = f"{other.version.major}.{other.version.minor}"
    resolved = resolve(EnvironmentSpec(conda_file=f"dependencies:\n  - python={minor}\n"), [other])
    text = "\n".join(resolved.warnings)
    assert f"conda asks for python=={minor}.*" in text and str(other.version) in text
    assert "in a private folder the deployments' own users cannot run" in text
    assert resolved.interpreter.minor != other.minor  # the platform's, as the warning says


@pytest.mark.integration  # starts a process
def test_discovery_finds_the_platform_minor() -> None:
    found = interpreters.discover()
    ours = interpreters.platform_interpreter()
    assert any(i.minor == ours.minor for i in found)


def test_unreadable_conda_file_fails_the_build_with_the_entry() -> None:
    with pytest.raises(EnvironmentError_, match="alternatives"):
        resolve(EnvironmentSpec(conda_file="dependencies: [numpy 1|2]"))


def test_catalogue_resolves_azure_names() -> None:
    catalogue = Catalogue.load()
    ds3 = catalogue.resolve("standard_ds3_v2")
    assert (ds3.vcpus, ds3.memory_gb) == (4, 14) and ds3.price_per_hour > 0
    assert catalogue.resolve("").name == catalogue.default
    with pytest.raises(UnknownInstanceType, match="is not in the catalogue"):
        catalogue.resolve("Standard_Imaginary_v9")


def test_a_platform_in_a_private_folder_is_named_before_any_deployment_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root, deployments import the platform as their own users: a 0700 checkout
    (`mktemp -d`) would make every instance die on a bare "Permission denied"."""
    from sluice.common import environments

    ours = Interpreter(sys.executable, Version(".".join(map(str, sys.version_info[:3]))))
    builder = EnvironmentBuilder(tmp_path / "envs", available=[ours])
    monkeypatch.setattr(environments, "isolating", lambda: True)
    with traversable_dir("sluice-env-") as base:
        private = base / "private"
        site = private / "sluice" / ".venv" / "site-packages"
        site.mkdir(parents=True)
        private.chmod(0o700)
        monkeypatch.setattr(environments.sysconfig, "get_paths", lambda: {"purelib": str(site)})
        with pytest.raises(EnvironmentError_) as failure:
            asyncio.run(builder.ensure(EnvironmentSpec()))
        assert f"`chmod o+x {private}`" in str(failure.value)
        private.chmod(0o755)
        assert asyncio.run(builder.ensure(EnvironmentSpec())).python == sys.executable


BACKEND = """
import json, os
# Runs when the installer loads the build backend, as a package's setup.py would.
def attempt(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        return type(exc).__name__
seen = {{"env": dict(os.environ), "uid": os.getuid()}}
seen |= {{"secret": attempt({secret!r}), "public": attempt({public!r})}}
with open({dump!r}, "w") as out:
    json.dump(seen, out)
"""


@pytest.mark.integration  # runs uv
@pytest.mark.parametrize("landlock", [False, True])
def test_a_packages_build_code_sees_none_of_the_platforms_secrets(
    monkeypatch: pytest.MonkeyPatch, landlock: bool
) -> None:
    """A deployer's requirement may be a project whose build backend runs their code: it
    must not find the admin token, the secret key or the database URI in its environment,
    nor, as root, run as root: it runs as a user made for the build, which cannot read the
    platform's files, and the environment it leaves is root's (others share it). With
    SLUICE_LANDLOCK (compose, Kubernetes: one uid) it reads no file outside its sandbox."""
    secrets = {
        "SLUICE_ADMIN_TOKEN": "admin-token-value",
        "SLUICE_SECRET_KEY": "secret-key-value",
        "SLUICE_MONGODB_URI": "mongodb://sluice:pw@127.0.0.1:1/",
        "AWS_SECRET_ACCESS_KEY": "cloud-secret",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    with traversable_dir("sluice-build-") as folder:
        secret = folder / "admin-token"  # as the state directory's: the platform's, 0600
        secret.write_text("platform-secret")
        secret.chmod(0o600)
        public = folder / "readable-by-all.txt"  # e.g. the service's NATS password, same uid
        public.write_text("outside the sandbox")
        public.chmod(0o644)
        project = folder / "evil"
        project.mkdir()
        project.chmod(0o755)
        (project / "pyproject.toml").write_text(
            '[project]\nname = "evil"\nversion = "1"\n'
            '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        )
        envs = folder / "envs"
        builder = EnvironmentBuilder(envs, landlock=landlock, sources=[project])
        # As root an interpreter the build's user can run, as resolve() chooses.
        usable, _ = interpreters.for_deployment_users(
            interpreters.platform_interpreter(), builder.interpreters
        )
        resolved = ResolvedEnvironment((str(project),), usable)
        dump = envs / resolved.key / "seen.json"  # the environment's folder: the build's own
        (project / "backend.py").write_text(
            BACKEND.format(dump=str(dump), secret=str(secret), public=str(public))
        )
        for file in project.iterdir():
            file.chmod(0o644)
        with pytest.raises(EnvironmentError_):  # the backend has no hooks: the build fails
            asyncio.run(builder._build(envs / resolved.key, resolved))
        seen = json.loads(dump.read_text())  # the backend ran
        venv = envs / resolved.key
        built = [p for p in (venv, *venv.rglob("*")) if not p.is_symlink()]
        owners = {(p.stat().st_uid, p.stat().st_mode & 0o022) for p in built}
    assert "PATH" in seen["env"] and "HOME" in seen["env"]
    leaked = {name for name, value in seen["env"].items() if value in secrets.values()}
    assert not leaked and not any(n.startswith("SLUICE_") for n in seen["env"]), sorted(seen)
    assert seen["public"] == ("PermissionError" if landlock else "outside the sandbox")
    if os.geteuid() != 0:
        return
    assert seen["uid"] != 0 and seen["secret"] == "PermissionError"
    assert owners == {(0, 0)}  # root's, nothing writable by others
    with pytest.raises(KeyError):  # the build's user is gone
        pwd.getpwuid(seen["uid"])


def tiny_wheel(folder: Path) -> Path:
    """A one-module wheel on disk: installs without an index or a build step."""
    import zipfile

    path = folder / "tinypkg-1.0-py3-none-any.whl"
    files = {
        "tinypkg/__init__.py": "VALUE = 42\n",
        "tinypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},,\n" for name in files) + "tinypkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in {**files, "tinypkg-1.0.dist-info/RECORD": record}.items():
            wheel.writestr(name, text)
    path.chmod(0o644)
    return path


def test_a_sandboxed_build_reads_only_the_local_requirements_under_its_sources(
    tmp_path: Path,
) -> None:
    """A requirement is a path the deployer chose: one leading out of the artifact store
    (`…/../../run/secrets/nats`) must not become a read rule of the build's sandbox."""
    from sluice.common.environments import build_sandbox

    artifacts = tmp_path / "artifacts" / "sha256" / "ab" / "code" / "pkg"
    artifacts.mkdir(parents=True)
    secret = tmp_path / "secrets" / "nats"
    secret.parent.mkdir()
    secret.write_text("password")
    sneaky = f"{artifacts}/../../../../../secrets/nats"
    resolved = ResolvedEnvironment(
        (str(artifacts), sneaky, str(secret)), interpreters.platform_interpreter()
    )
    sandbox = build_sandbox(
        resolved, tmp_path / "venv", tmp_path / "home", [tmp_path / "artifacts"]
    )
    assert str(artifacts) in sandbox["read"]
    assert not [p for p in sandbox["read"] if "secrets" in p], sandbox["read"]


@pytest.mark.integration  # builds an environment with uv
def test_two_processes_asking_for_one_environment_build_it_once() -> None:
    """The provisioner and the batch service share `envs/`; each locked builds only within
    itself, so both could build one environment at once (each removing the other's folder,
    and, as root, stopping the other's processes when its build ends). Two builders, as two
    processes have, asked at once: one builds, the other waits and finds it ready."""
    import structlog

    with traversable_dir("sluice-envs-") as folder:
        wheel = tiny_wheel(folder)
        envs = folder / "envs"
        first, second = EnvironmentBuilder(envs), EnvironmentBuilder(envs)
        spec = EnvironmentSpec(pip_requirements=(str(wheel),))

        async def both() -> list[Environment]:
            return list(await asyncio.gather(first.ensure(spec), second.ensure(spec)))

        with structlog.testing.capture_logs() as logs:
            a, b = asyncio.run(both())
        builds = [e for e in logs if e["event"] == "environment_building"]
        assert len(builds) == 1, builds
        assert a.python == b.python
        ran = subprocess.run(
            [a.python, "-c", "import tinypkg; print(tinypkg.VALUE)"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert ran.stdout.strip() == "42"


@pytest.mark.integration  # builds an environment with uv
def test_an_environment_built_by_another_checkout_is_linked_to_this_one() -> None:
    """Environments live in the state folder, which outlives a checkout: re-cloned or
    moved, the platform finds its environments linked to a site-packages that is gone, and
    every deployment's server failed with "No module named 'sluice'" (seen after a
    re-clone). Found ready, an environment is linked to the running platform again."""
    with traversable_dir("sluice-envs-") as folder:
        spec = EnvironmentSpec(pip_requirements=(str(tiny_wheel(folder)),))
        builder = EnvironmentBuilder(folder / "envs")
        env = asyncio.run(builder.ensure(spec))
        site = next(Path(env.python).parent.parent.glob("lib/python3*/site-packages"))
        pth = site / PTH
        linked = pth.read_text()
        pth.write_text("import site; site.addsitedir('/gone/checkout/.venv/site-packages')\n")
        check = [env.python, "-c", "import tinypkg, sluice.common.platform_link"]
        assert subprocess.run(check, capture_output=True).returncode != 0
        again = asyncio.run(EnvironmentBuilder(folder / "envs").ensure(spec))
        assert again.python == env.python and pth.read_text() == linked
        ran = subprocess.run(check, capture_output=True, text=True)
        assert ran.returncode == 0, ran.stderr


@pytest.mark.integration  # builds an environment with uv from PyPI (about 15 s)
@pytest.mark.timeout(300)
def test_scikit_learn_1_2_2_is_built_with_numpy_1() -> None:
    """The inference-schema sample's environment, built for real: uv honours the constraint,
    so scikit-learn 1.2.2's compiled modules import (with NumPy 2 they fail: "numpy.dtype size
    changed"), and the build log says why NumPy is held back."""
    with traversable_dir("sluice-envs-") as folder:
        builder = EnvironmentBuilder(folder / "envs")
        env = asyncio.run(builder.ensure(EnvironmentSpec(conda_file=OLD_SKLEARN)))
        ran = subprocess.run(
            [env.python, "-c", "import numpy, sklearn.linear_model as m; "
             "print(numpy.__version__, m.LinearRegression().fit([[0], [1]], [1, 3]).coef_[0])"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        numpy_version, coef = ran.stdout.split()
        assert Version(numpy_version).major == 1 and float(coef) == pytest.approx(2.0)
        assert env.log_path is not None
        text = env.log_path.read_text()
    assert "warning: numpy<2: scikit-learn 1.2.2 predates its NumPy 2 build (1.4.2)" in text
    assert "constraints:\n  numpy<2\n" in text and "--constraints " in text


@pytest.mark.integration  # runs a process
async def test_an_installer_killed_by_a_signal_runs_once_more(tmp_path: Path) -> None:
    """uv crashed once in CI (SIGSEGV in `uv venv`): a step killed by a signal is run again
    once, and a second crash fails the build, naming the signal as its exit status."""
    marker, log = tmp_path / "crashed-once", tmp_path / "build.log"
    once = f"[ -e {marker} ] || {{ touch {marker}; kill -SEGV $$; }}; echo installed"
    await EnvironmentBuilder._run(["/bin/sh", "-c", once], log)
    assert "killed by signal 11: once more" in log.read_text()
    assert log.read_text().rstrip().endswith("installed")
    with pytest.raises(EnvironmentError_, match="exited -11"):
        await EnvironmentBuilder._run(["/bin/sh", "-c", "kill -SEGV $$"], log)


@pytest.mark.integration  # runs uv
def test_a_failed_build_says_its_warnings_first() -> None:
    """The build log starts with its warnings and the failure's message ends with the
    installer's last lines, which no longer reach them: the message carries both (a batch
    job's status and a deployment's error show it)."""
    with traversable_dir("sluice-build-") as folder:
        builder = EnvironmentBuilder(folder / "envs")
        usable, _ = interpreters.for_deployment_users(
            interpreters.platform_interpreter(), builder.interpreters
        )
        warning = "conda asks for python==3.8.5.*; no such interpreter is on this machine"
        resolved = ResolvedEnvironment(
            ("sluice-no-such-package-anywhere==9.9.9",), usable, warnings=(warning,)
        )
        with pytest.raises(EnvironmentError_) as failure:
            asyncio.run(builder._build(folder / "envs" / resolved.key, resolved))
    lines = str(failure.value).splitlines()
    assert lines[0].startswith("environment build failed (")
    assert lines[1] == f"warning: {warning}"
    assert "sluice-no-such-package-anywhere" in "\n".join(lines[2:])
