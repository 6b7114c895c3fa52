"""Environments: a deployment's conda file / pip list becomes a cached virtualenv.

The environment is resolved to a sorted list of pip requirements (conda match
specs are translated by `sluice.common.conda`), the constraints Sluice adds
(`numpy<2` beside a pinned release built against NumPy 1.x, which conda would
have honoured: `conda.numpy_1_reasons`) and an interpreter, hashed, and built
once with uv into `<root>/<hash>/`; every deployment with the same requirements,
constraints and interpreter shares it. The virtualenv also sees the
platform's own packages (through a `.pth` hook placed *after* its
site-packages), so the inference server runs in it while the user's pins take
precedence. An environment of another Python minor than the platform's
(`python=3.12`, see `interpreters`) cannot use those compiled packages: it
gets the inference server installed into it from its sources instead.

What cannot be honoured is said, not skipped silently: conda packages
installed from PyPI, skipped system libraries, a `python=` that no interpreter
here satisfies (`interpreters.choose`), and the Azure runtime packages the
inference server replaces (`azureml-defaults`, `azureml-inference-server-http`)
all become warnings in the build log and the provisioner's log.

A build runs code the deployer chose (a package's `setup.py` or build
backend), so the installer gets only what an installer reads (`build_env`):
none of the platform's variables (`SLUICE_ADMIN_TOKEN`, `SLUICE_SECRET_KEY`,
`SLUICE_MONGODB_URI`, ...) reach it. As root it also runs as a user of its
own, made for that build (`sluice-d-<hash of build/<key>>`, with a HOME
and uv cache of its own), which cannot read the state directory's secrets;
afterwards its processes are stopped, the environment becomes root's (no
set-id bit, nothing writable by others: deployments share it) and the user
is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from sluice.common import confine, interpreters, platform_link
from sluice.common.conda import NUMPY_1, CondaSpecError, numpy_1_reasons, parse_conda_file
from sluice.common.curated import CuratedCatalogue
from sluice.common.interpreters import Interpreter
from sluice.common.isolation import (
    Account,
    account_for,
    give_to_platform,
    isolating,
    make_private_dir,
    reachable_by_others,
    remove_account,
    stop_processes_of,
)
from sluice.common.log import get_logger
from sluice.common.resources import EnvironmentSpec

log = get_logger(__name__)

# Provided by Sluice's inference server (the scoring runtime they would bring on Azure).
REPLACED_BY_SLUICE = frozenset({"azureml-defaults", "azureml-inference-server-http"})

# What uv (and the build backends it runs) may read of the platform's environment: where
# programs, caches and configuration are, the locale, the network's proxies and CAs, and
# the installers' own settings (an index, find-links, offline mode).
BUILD_VARIABLES = frozenset(
    {
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "XDG_CACHE_HOME",
        "XDG_CONFIG_HOME",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
    }
)
BUILD_PREFIXES = ("UV_", "PIP_", "LC_")


class EnvironmentError_(RuntimeError):  # noqa: N801 - avoid shadowing the builtin EnvironmentError
    """The environment could not be built; the message holds the installer's error."""


def platform_unreachable() -> str | None:
    """Why deployments' own users could not import the platform, or None.

    As root, deployments run as users of their own and import the platform's packages.
    A checkout in a private folder (`mktemp -d` makes 0700 ones) would let them start and
    then fail on the first import with a bare "Permission denied": say what to fix instead.
    """
    if not isolating():
        return None
    platform_site = Path(sysconfig.get_paths()["purelib"])
    blocked = reachable_by_others(platform_site)
    if blocked is None:
        return None
    return (
        f"deployments run as their own users and import the platform from {platform_site}, "
        f"but {blocked} is private to {blocked.owner()}: `chmod o+x {blocked}` or install "
        "the platform in a folder other users can traverse"
    )


@dataclass(frozen=True)
class ResolvedEnvironment:
    requirements: tuple[str, ...]
    interpreter: Interpreter
    warnings: tuple[str, ...] = ()
    # uv constraints: they bound a package's version if it is installed, never install one
    constraints: tuple[str, ...] = ()

    @property
    def foreign(self) -> bool:
        """Another Python minor than the platform's: it gets its own inference server."""
        return self.interpreter.minor != sys.version_info[:2]

    @property
    def key(self) -> str:
        lines = [f"python={self.interpreter.version}", *self.requirements]
        # Only when there are some: an environment without constraints keeps the key it was
        # built under, and one that gains `numpy<2` is built anew, not found with NumPy 2.
        lines += [f"-c {constraint}" for constraint in self.constraints]
        if self.foreign:  # it holds a copy of the server: a newer platform needs a new one
            lines.append(f"server={interpreters.server_digest()}")
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Environment:
    python: str  # the interpreter instances run with
    key: str
    log_path: Path | None
    warnings: tuple[str, ...] = field(default=())


def _package_name(requirement: str) -> str:
    try:
        return canonicalize_name(Requirement(requirement).name)
    except InvalidRequirement:
        return requirement.strip().lower()


def resolve(spec: EnvironmentSpec, available: Sequence[Interpreter] = ()) -> ResolvedEnvironment:
    """The pip requirements and interpreter an environment spec asks for, plus caveats.

    `available` are the machine's interpreters (`interpreters.discover()`); the
    platform's own is always a candidate. A conda file that cannot be read
    raises `EnvironmentError_` (the registry refuses such files at create time).
    """
    requirements: list[str] = list(spec.pip_requirements)
    warnings: list[str] = []
    if spec.registered and not (spec.conda_file or spec.pip_requirements):
        warnings.append(
            f"registered environment {spec.registered!r} has no packages; using the "
            "platform's environment"
        )
    if spec.registered and (note := CuratedCatalogue.load().note_for(spec.registered)):
        warnings.append(note)
    if spec.image:
        warnings.append(f"image {spec.image!r} is ignored by the local backend")
    python = ""
    if spec.conda_file:
        try:
            conda = parse_conda_file(spec.conda_file)
        except CondaSpecError as exc:
            raise EnvironmentError_(str(exc)) from None
        requirements.extend(conda.requirements)
        warnings.extend(conda.warnings)
        python = conda.python
    platform, usable = interpreters.for_deployment_users(
        interpreters.platform_interpreter(), available
    )
    sources = interpreters.server_sources()
    choice = interpreters.choose(python, usable, platform, other_minors=sources is not None)
    if choice.warning:
        private = [i for i in available if i not in usable and python and i.path]
        fits = [i for i in private if SpecifierSet(python).contains(i.version, prereleases=True)]
        if fits:
            where = ", ".join(f"{i.version} at {i.path}" for i in fits)
            choice = interpreters.Choice(
                choice.interpreter,
                f"{choice.warning} (Python {where} is in a private folder the deployments' "
                "own users cannot run; install it where every user can, e.g. /usr/local)",
            )
        warnings.append(choice.warning)
    kept: list[str] = []
    for req in requirements:
        if _package_name(req) in REPLACED_BY_SLUICE:
            warnings.append(f"{req!r} is not installed: Sluice's inference server replaces it")
        elif req.strip() and req.strip() not in kept:
            kept.append(req.strip())
    constraints: tuple[str, ...] = ()
    if reasons := numpy_1_reasons(kept):
        constraints = (NUMPY_1,)
        warnings.append(f"{NUMPY_1}: " + "; ".join(reasons) + " (pin numpy to choose another)")
    return ResolvedEnvironment(
        tuple(sorted(kept)), choice.interpreter, tuple(warnings), constraints
    )


def build_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The installer's environment: `BUILD_VARIABLES` and the `BUILD_PREFIXES` ones of
    `environ` (proxies in either case), nothing else: a package's build code runs with it."""
    return {
        name: value
        for name, value in environ.items()
        if name.upper() in BUILD_VARIABLES or name.startswith(BUILD_PREFIXES)
    }


def build_sandbox(
    resolved: ResolvedEnvironment, venv: Path, home: Path, sources: Sequence[Path] = ()
) -> dict[str, list[str]]:
    """A sandboxed build reads the interpreter, the platform (uv, the inference server's
    sources) and the local projects and wheels its requirements name that lie under
    `sources` (the artifact store: the deployer's uploads), and writes the environment and
    its HOME. A requirement naming anything else (`…/../../run/secrets/nats`, the state
    volume) is read by nothing: the deployer's build code runs in this sandbox."""
    roots = [root.resolve() for root in sources]
    local = set()
    for requirement in resolved.requirements:
        path = Path(requirement)
        if path.is_absolute() and path.exists():
            real = path.resolve()
            if any(real.is_relative_to(root) for root in roots):
                local.add(str(real))
    read = confine.platform_paths(resolved.interpreter.path) | local
    return {"read": sorted(read), "write": [str(venv), str(home)]}


def _uv() -> str:
    try:
        from uv import find_uv_bin  # the `uv` package ships the binary

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise EnvironmentError_("uv is not installed (pip install uv)") from None
        return found


BUILD_LOCK_POLL_S = 0.2


def _with_warnings(failure: EnvironmentError_, warnings: Sequence[str]) -> EnvironmentError_:
    """A failed build's message with the build's warnings after its first line: they head
    the build log, where the installer's last lines (the message's) no longer reach them,
    and one often says why (`python=3.8.5` asked, another Python used)."""
    if not warnings:
        return failure
    head, _, tail = str(failure).partition("\n")
    said = "".join(f"warning: {warning}\n" for warning in warnings)
    return EnvironmentError_(f"{head}\n{said}{tail}")


class EnvironmentBuilder:
    """Builds and caches virtualenvs under `root`, one per distinct requirement set."""

    def __init__(
        self,
        root: Path,
        available: Sequence[Interpreter] | None = None,
        *,
        landlock: bool = False,
        sources: Sequence[Path] = (),
    ):
        """`sources`: where local requirements (uploaded projects and wheels) may lie."""
        self.root = root
        self._sources = tuple(sources)
        # compose and Kubernetes (SLUICE_LANDLOCK): builds run in a Landlock sandbox that
        # reaches the interpreter, the platform, the environment's folder and a HOME and uv
        # cache of the build's own (sluice.common.confine), not the service's other files.
        self._landlock = landlock
        self._locks: dict[str, asyncio.Lock] = {}
        self._available = available

    @property
    def interpreters(self) -> Sequence[Interpreter]:
        """The machine's interpreters, looked up once (a few subprocesses)."""
        if self._available is None:
            self._available = interpreters.discover()
        return self._available

    def resolve(self, spec: EnvironmentSpec) -> ResolvedEnvironment:
        return resolve(spec, self.interpreters)

    def log_path(self, key: str) -> Path:
        return self.root / f"{key}.log"

    async def ensure(self, spec: EnvironmentSpec) -> Environment:
        resolved = self.resolve(spec)
        if not resolved.foreign and (problem := platform_unreachable()):
            raise EnvironmentError_(problem)
        if not resolved.requirements and resolved.interpreter.path == sys.executable:
            return Environment(sys.executable, "platform", None, resolved.warnings)
        key = resolved.key
        venv = self.root / key
        python = venv / "bin" / "python"
        ready = Environment(str(python), key, self.log_path(key), resolved.warnings)
        if not (venv / ".ready").exists():
            async with self._locks.setdefault(key, asyncio.Lock()), self._build_lock(key):
                if not (venv / ".ready").exists():  # else another process built it meanwhile
                    await self._build(venv, resolved)
        if not resolved.foreign:
            # Built by this platform, or by another checkout of it that shared the state
            # folder (re-cloned, moved, deleted since): link it to the one running now.
            self._link_platform(venv)
        return ready

    @contextlib.asynccontextmanager
    async def _build_lock(self, key: str) -> AsyncIterator[None]:
        """One build of an environment at a time across processes: the provisioner and the
        batch service share `envs/` (and builds of one environment share a build user, whose
        processes each build's end stops). The others wait, then find it ready."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f".{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:  # a build minutes long: poll, never hold a thread
                    await asyncio.sleep(BUILD_LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # and with it the lock

    async def _build(self, venv: Path, resolved: ResolvedEnvironment) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # no secrets here; deployments' own users run these
        log_path = self.log_path(resolved.key)
        shutil.rmtree(venv, ignore_errors=True)
        with log_path.open("w") as out:
            for warning in resolved.warnings:
                out.write(f"warning: {warning}\n")
            out.write(f"python: {resolved.interpreter.path} ({resolved.interpreter.version})\n")
            out.write("requirements:\n" + "".join(f"  {r}\n" for r in resolved.requirements))
            if resolved.constraints:
                out.write("constraints:\n" + "".join(f"  {c}\n" for c in resolved.constraints))
        log.info(
            "environment_building",
            key=resolved.key,
            requirements=resolved.requirements,
            constraints=resolved.constraints,
        )
        builder = account_for("build", resolved.key) if isolating() else None
        sandboxed = self._landlock
        try:
            await self._install(venv, resolved, log_path, builder, sandboxed)
        except EnvironmentError_ as failure:
            raise _with_warnings(failure, resolved.warnings) from None
        finally:
            if builder is not None:
                await asyncio.to_thread(self._end_build, venv, resolved.key, builder)
            else:
                shutil.rmtree(self._build_home(resolved.key), ignore_errors=True)
        (venv / ".ready").write_text("\n".join(resolved.requirements) + "\n")
        log.info("environment_ready", key=resolved.key)

    def _build_home(self, key: str) -> Path:
        return self.root / f".build-{key}"

    def _start_build(self, venv: Path, key: str, builder: Account | None) -> Path:
        """The build's HOME, and `venv` (empty), both its user's (`builder`, else ours)."""
        home = self._build_home(key)
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(mode=0o700, parents=True)
        venv.mkdir(mode=0o755)
        if builder is not None:
            make_private_dir(home, builder)
            os.chown(venv, builder.uid, builder.gid)
        return home

    def _end_build(self, venv: Path, key: str, builder: Account) -> None:
        stop_processes_of(builder.uid)
        shutil.rmtree(self._build_home(key), ignore_errors=True)
        if venv.exists():
            give_to_platform(venv)
        remove_account("build", key)

    async def _install(
        self,
        venv: Path,
        resolved: ResolvedEnvironment,
        log_path: Path,
        builder: Account | None,
        sandboxed: bool = False,
    ) -> None:
        """uv venv, then uv pip install: as `builder` when given, in a HOME (and uv cache) of
        its own, into `venv` made its own beforehand; likewise in a Landlock sandbox when
        `sandboxed` (reading the interpreter, the platform and local requirements' folders)."""
        home = None
        sandbox: dict[str, list[str]] | None = None
        if builder is not None:
            home = await asyncio.to_thread(self._start_build, venv, resolved.key, builder)
        elif sandboxed:
            home = await asyncio.to_thread(self._start_build, venv, resolved.key, None)
        if home is not None and sandboxed:
            sandbox = await asyncio.to_thread(build_sandbox, resolved, venv, home, self._sources)
        run = functools.partial(
            self._run,
            log_path=log_path,
            builder=builder,
            home=home,
            sandbox=sandbox,
            python=resolved.interpreter.path,
        )
        uv = _uv()
        await run(
            [
                uv,
                "venv",
                "--python",
                resolved.interpreter.path,
                "--quiet",
                "--allow-existing",
                str(venv),
            ]
        )
        server: list[str] = []
        if resolved.foreign:
            server = interpreters.server_sources() or []
            if not server:
                raise EnvironmentError_(
                    f"Python {resolved.interpreter.version} needs the inference server "
                    "installed from its sources, which this platform does not have"
                )
        if resolved.requirements or server:
            python = str(venv / "bin" / "python")
            # Bytecode compiled now: instances run as deployments' users, who cannot write
            # into the (platform's) environment, so they would compile every import again.
            install = [uv, "pip", "install", "--compile-bytecode", "--python", python]
            if resolved.constraints:
                constraints = await asyncio.to_thread(self._constraints_file, venv, resolved)
                install += ["--constraints", str(constraints)]
            await run([*install, *resolved.requirements, *server])

    @staticmethod
    def _constraints_file(venv: Path, resolved: ResolvedEnvironment) -> Path:
        """`resolved.constraints` as a file uv reads (it takes constraints from files only).
        In the environment's folder: the build's user and its sandbox read it there."""
        path = venv / "sluice-constraints.txt"
        path.write_text("".join(f"{c}\n" for c in resolved.constraints))
        path.chmod(0o644)
        return path

    @staticmethod
    async def _run(
        argv: list[str],
        log_path: Path,
        builder: Account | None = None,
        home: Path | None = None,
        sandbox: dict[str, list[str]] | None = None,
        python: str = sys.executable,
    ) -> None:
        """`argv` with the installer's environment; with `sandbox`, through the Landlock
        launcher run by `python` (an interpreter the build's user can run)."""
        env = build_env(os.environ)
        user: dict[str, Any] = {}
        if home is not None:  # its own HOME, temporary files and cache
            env |= {"HOME": str(home), "TMPDIR": str(home), "UV_CACHE_DIR": str(home / "uv")}
            user = {"cwd": home}
        if builder is not None:
            user |= {"user": builder.uid, "group": builder.gid, "extra_groups": []}
        shown = argv
        if sandbox is not None:  # the launcher reads the sandbox and the command on stdin
            spec = {**sandbox, "argv": argv, "read": [*sandbox["read"], argv[0]]}
            user["input"] = json.dumps(spec).encode()
            argv = confine.command(python)
        with log_path.open("a") as out:
            out.write("$ " + " ".join(shown) + "\n")
            out.flush()
            # A thread, not asyncio's subprocesses: uvloop's do not take user and group.
            run = functools.partial(
                subprocess.run, argv, stdout=out, stderr=subprocess.STDOUT, env=env, **user
            )
            code = (await asyncio.to_thread(run)).returncode
            if code < 0:  # killed by a signal (a crash of the installer, seen once: SIGSEGV)
                out.write(f"(killed by signal {-code}: once more)\n")
                out.flush()
                code = (await asyncio.to_thread(run)).returncode
        if code != 0:
            tail = log_path.read_text().splitlines()[-15:]  # noqa: ASYNC240 - a small log, once
            raise EnvironmentError_(
                f"environment build failed ({Path(shown[0]).name} exited {code}):\n"
                + "\n".join(tail)
            )

    @staticmethod
    def _link_platform(venv: Path) -> None:
        """Let the venv import the platform's packages, after its own (user pins win;
        the platform's code running there puts them first: platform_link.py). Written only
        when it links elsewhere, and atomically: instances may be starting from it."""
        site = next((venv / "lib").glob("python3*/site-packages"))
        line = platform_link.link_line(sysconfig.get_paths()["purelib"])
        pth = site / platform_link.PTH
        with contextlib.suppress(FileNotFoundError):
            if pth.read_text() == line:
                return
        staged = site / f".{platform_link.PTH}.{os.getpid()}"
        staged.write_text(line)
        staged.replace(pth)
