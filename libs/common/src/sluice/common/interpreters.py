"""Which Python an environment runs with, given the `python=` its conda file asks for.

Instances import the inference server from the platform's own site-packages
(compiled for the platform's Python minor version), so an interpreter *of that
minor version* found on the machine needs nothing more: `python=3.11.2` is
honoured with `/usr/bin/python3.11` when that is 3.11.2. Another minor
(`python=3.12`) is honoured when such an interpreter is here and the server can
be installed into the environment from its sources (`server_sources`: the
platform runs from a checkout); the environment then gets its own copy of the
inference server instead of the platform's. Anything else falls back to the
platform's interpreter, and the choice is returned as a warning for the
deployment's status and logs. Nothing is downloaded: uv's Python downloads are
not reachable here.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

# The inference server's own floor (its packages' requires-python).
SERVER_MINIMUM = Version("3.11")
SERVER_PACKAGES = ("sluice-common", "sluice-proto", "sluice-inference")
PROBE = "import sys; print('.'.join(map(str, sys.version_info[:3])))"
PROBE_TIMEOUT_S = 5


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: Version

    @property
    def minor(self) -> tuple[int, int]:
        return (self.version.major, self.version.minor)


@dataclass(frozen=True)
class Choice:
    interpreter: Interpreter
    warning: str = ""


def platform_interpreter() -> Interpreter:
    return Interpreter(sys.executable, Version(".".join(map(str, sys.version_info[:3]))))


def _candidates() -> list[str]:
    """Executables named python3.N on PATH, in the usual system places and pyenv's versions."""
    folders = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found: list[str] = []
    for folder in [*folders, *(str(p / "bin") for p in sorted(pyenv.glob("*")))]:
        if "shims" in folder:  # pyenv's shims fail for versions that are not selected
            continue
        if not folder:
            continue
        for path in sorted(Path(folder).glob("python3.[0-9]*")):
            if path.name[-1].isdigit() and os.access(path, os.X_OK):
                real = str(path.resolve())
                if real not in found:
                    found.append(real)
    return found


def discover() -> list[Interpreter]:
    """Every Python 3 interpreter on the machine that answers with its version."""
    interpreters: list[Interpreter] = []
    for path in _candidates():
        try:
            out = subprocess.run(
                [path, "-c", PROBE],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
                check=True,
            ).stdout.strip()
            interpreters.append(Interpreter(path, Version(out)))
        except (OSError, subprocess.SubprocessError, ValueError):
            continue
    return interpreters


def server_sources() -> list[str] | None:
    """Local folders the inference server's packages can be installed from into an
    environment of another Python minor (the platform runs from a checkout); else None."""
    folders = []
    for name in SERVER_PACKAGES:
        try:
            raw = importlib.metadata.distribution(name).read_text("direct_url.json")
        except importlib.metadata.PackageNotFoundError:
            return None
        url = str(json.loads(raw or "{}").get("url", ""))
        if not url.startswith("file://") or not Path(url.removeprefix("file://")).is_dir():
            return None
        folders.append(url.removeprefix("file://"))
    return folders


@functools.cache
def server_digest() -> str:
    """A digest of the server's sources as this platform has them ("" without sources):
    part of the key of an environment of another minor, which holds a copy of them, so
    a platform updated since builds it anew instead of running the old server."""
    return sources_digest(server_sources() or [])


def sources_digest(folders: Sequence[str]) -> str:
    """sha256 of each project folder's pyproject.toml and the files under its `src/`
    (names and contents; tests and bytecode caches left out)."""
    digest = hashlib.sha256()
    for folder in folders:
        root = Path(folder)
        files = [*(root / "src").rglob("*"), *root.glob("pyproject.toml")]
        for path in sorted(p for p in files if p.is_file() and "__pycache__" not in p.parts):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16] if folders else ""


def choose(
    specifier: str,
    available: Sequence[Interpreter],
    platform: Interpreter,
    *,
    other_minors: bool = False,
) -> Choice:
    """The interpreter for `python<specifier>`: the platform's if it fits, else one of its
    minor, else (with `other_minors`: the server can be installed) the newest that fits."""
    if not specifier:
        return Choice(platform)
    wanted = SpecifierSet(specifier)
    if wanted.contains(platform.version, prereleases=True):
        return Choice(platform)
    same_minor = [i for i in available if i.minor == platform.minor]
    for interpreter in sorted(same_minor, key=lambda i: i.version, reverse=True):
        if wanted.contains(interpreter.version, prereleases=True):
            return Choice(interpreter)
    fitting = sorted(
        (i for i in available if wanted.contains(i.version, prereleases=True)),
        key=lambda i: i.version,
    )
    servable = [i for i in fitting if i.version >= SERVER_MINIMUM]
    if other_minors and servable:
        return Choice(servable[-1])
    versions = ", ".join(str(i.version) for i in fitting)
    if not fitting:
        why = "no such interpreter is on this machine and none can be downloaded"
    elif not servable:
        why = (
            f"Python {versions} is on this machine, but the inference server needs "
            f"{SERVER_MINIMUM}+"
        )
    else:
        why = (
            f"Python {versions} is on this machine, but the inference server cannot be "
            "installed for it (the platform does not run from its sources)"
        )
    return Choice(
        platform,
        f"conda asks for python{specifier}; {why}: instances run Python {platform.version} "
        f"({platform.path}) instead",
    )


def platform_minor(python: str) -> bool:
    """Whether the virtualenv (or interpreter) `python` runs the platform's Python minor:
    only those can import the platform's own packages (a spare process does)."""
    cfg = Path(python).parent.parent / "pyvenv.cfg"
    if not cfg.is_file():
        return True  # not a virtualenv: the platform's interpreter or one chosen of its minor
    for line in cfg.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("version_info", "version"):
            return tuple(int(p) for p in value.strip().split(".")[:2]) == sys.version_info[:2]
    return True


def runnable_by_others(path: str) -> bool:
    """Whether a user other than the platform's can run this interpreter (symlinks resolved):
    every folder on the way traversable by others, the file executable by others."""
    real = Path(path).resolve()
    if not real.is_file():
        return False
    return all(p.stat().st_mode & stat.S_IXOTH for p in [real, *real.parents])


def for_deployment_users(
    platform: Interpreter, available: Sequence[Interpreter]
) -> tuple[Interpreter, list[Interpreter]]:
    """(platform, available) reduced to what deployment users can run.

    As root the provisioner runs each deployment as a user of its own
    (sluice.common.isolation), who cannot run an interpreter in a private
    home such as /root/.pyenv; then one of the platform's minor version that
    they can run stands in for the platform's. Not root: unchanged.
    """
    if os.geteuid() != 0:
        return platform, list(available)
    usable = [i for i in available if runnable_by_others(i.path)]
    if runnable_by_others(platform.path):
        return platform, usable
    same_minor = [i for i in usable if i.minor == platform.minor]
    if not same_minor:
        return platform, usable  # instances fail to start, saying the interpreter is private
    return max(same_minor, key=lambda i: i.version), usable
