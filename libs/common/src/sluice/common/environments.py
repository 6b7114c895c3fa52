"""Environments: a deployment's conda file / pip list becomes a cached virtualenv.

The environment is resolved to a sorted list of pip requirements, hashed,
and built once with uv into `<root>/<hash>/`; every deployment with the same
requirements shares it. The virtualenv also sees the platform's own packages
(through a `.pth` hook placed *after* its site-packages), so the inference
server runs in it while the user's pins take precedence.

What cannot be honoured is said, not skipped silently: conda-only entries are
installed from PyPI under the same name (warned), a Python version other than
the platform's is warned about, and Azure runtime packages the inference
server replaces (`azureml-defaults`, `azureml-inference-server-http`) are
left out with a warning.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sluice.common.log import get_logger
from sluice.common.resources import EnvironmentSpec

log = get_logger(__name__)

# Provided by Sluice's inference server (the scoring runtime they would bring on Azure).
REPLACED_BY_SLUICE = frozenset({"azureml-defaults", "azureml-inference-server-http"})
CONDA_ONLY = frozenset({"pip", "python", "setuptools", "wheel"})
NAME_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


class EnvironmentError_(RuntimeError):  # noqa: N801 - avoid shadowing the builtin EnvironmentError
    """The environment could not be built; the message holds the installer's error."""


@dataclass(frozen=True)
class ResolvedEnvironment:
    requirements: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        text = "\n".join(
            [f"python={sys.version_info[0]}.{sys.version_info[1]}", *self.requirements]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Environment:
    python: str  # the interpreter instances run with
    key: str
    log_path: Path | None
    warnings: tuple[str, ...] = field(default=())


def _package_name(requirement: str) -> str:
    match = NAME_RE.match(requirement.strip())
    return match.group(1).lower().replace("_", "-") if match else requirement.lower()


def resolve(spec: EnvironmentSpec) -> ResolvedEnvironment:
    """The pip requirements an environment spec asks for, plus what could not be honoured."""
    requirements: list[str] = list(spec.pip_requirements)
    warnings: list[str] = []
    if spec.registered:
        warnings.append(
            f"registered environment {spec.registered!r} cannot be fetched here; using the "
            "platform's environment"
        )
    if spec.image:
        warnings.append(f"image {spec.image!r} is ignored by the local backend")
    if spec.conda_file:
        conda = yaml.safe_load(spec.conda_file) or {}
        for dep in conda.get("dependencies", []) or []:
            if isinstance(dep, dict):
                requirements.extend(str(r) for r in dep.get("pip", []) or [])
                continue
            text = str(dep)
            name = _package_name(text.split("=")[0])
            if name == "python":
                wanted = text.partition("=")[2].lstrip("=")
                have = f"{sys.version_info[0]}.{sys.version_info[1]}"
                if wanted and not have.startswith(wanted) and not wanted.startswith(have):
                    warnings.append(f"conda asks for python {wanted}; instances run Python {have}")
                continue
            if name in CONDA_ONLY:
                continue
            version = text.partition("=")[2].lstrip("=")
            requirements.append(f"{name}=={version}" if version and "*" not in version else name)
            warnings.append(
                f"conda package {text!r} is installed from PyPI as {requirements[-1]!r}"
            )
    kept: list[str] = []
    for req in requirements:
        if _package_name(req) in REPLACED_BY_SLUICE:
            warnings.append(f"{req!r} is not installed: Sluice's inference server replaces it")
        elif req.strip() and req.strip() not in kept:
            kept.append(req.strip())
    return ResolvedEnvironment(tuple(sorted(kept)), tuple(warnings))


def _uv() -> str:
    try:
        from uv import find_uv_bin  # the `uv` package ships the binary

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise EnvironmentError_("uv is not installed (pip install uv)") from None
        return found


class EnvironmentBuilder:
    """Builds and caches virtualenvs under `root`, one per distinct requirement set."""

    def __init__(self, root: Path):
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}

    def log_path(self, key: str) -> Path:
        return self.root / f"{key}.log"

    async def ensure(self, spec: EnvironmentSpec) -> Environment:
        resolved = resolve(spec)
        if not resolved.requirements:
            return Environment(sys.executable, "platform", None, resolved.warnings)
        key = resolved.key
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            venv = self.root / key
            python = venv / "bin" / "python"
            if not (venv / ".ready").exists():
                await self._build(venv, resolved)
            return Environment(str(python), key, self.log_path(key), resolved.warnings)

    async def _build(self, venv: Path, resolved: ResolvedEnvironment) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(resolved.key)
        shutil.rmtree(venv, ignore_errors=True)
        with log_path.open("w") as out:
            for warning in resolved.warnings:
                out.write(f"warning: {warning}\n")
            out.write("requirements:\n" + "".join(f"  {r}\n" for r in resolved.requirements))
        log.info("environment_building", key=resolved.key, requirements=resolved.requirements)
        uv = _uv()
        await self._run([uv, "venv", "--python", sys.executable, "--quiet", str(venv)], log_path)
        await self._run(
            [
                uv,
                "pip",
                "install",
                "--python",
                str(venv / "bin" / "python"),
                *resolved.requirements,
            ],
            log_path,
        )
        self._link_platform(venv)
        (venv / ".ready").write_text("\n".join(resolved.requirements) + "\n")
        log.info("environment_ready", key=resolved.key)

    @staticmethod
    async def _run(argv: list[str], log_path: Path) -> None:
        with log_path.open("a") as out:
            out.write("$ " + " ".join(argv) + "\n")
            out.flush()
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env={**os.environ}
            )
            code = await proc.wait()
        if code != 0:
            tail = log_path.read_text().splitlines()[-15:]  # noqa: ASYNC240 - a small log, once
            raise EnvironmentError_(
                f"environment build failed ({Path(argv[0]).name} exited {code}):\n"
                + "\n".join(tail)
            )

    @staticmethod
    def _link_platform(venv: Path) -> None:
        """Let the venv import the platform's packages, after its own (user pins win)."""
        site = next((venv / "lib").glob("python3*/site-packages"))
        platform_site = sysconfig.get_paths()["purelib"]
        (site / "zz_sluice_platform.pth").write_text(
            f"import site; site.addsitedir({platform_site!r})\n"
        )
