"""Conda environment files -> pip requirements, read with conda's match-spec rules.

Sluice builds environments with uv from PyPI, so every conda dependency is
translated to a PEP 508 requirement and checked with `packaging`:

- `numpy>=1.20`, `numpy<2`, `numpy >=1.2,<2` keep their bounds;
- `numpy=1.26` is conda's fuzzy match (`1.26.*`), `numpy==1.26` exact;
- `scikit-learn=1.0.2=py39h...` (what `conda env export` writes) drops the
  build string and pins `==1.0.2`;
- `conda-forge::numpy` and `numpy[version='>=1.2']` are understood;
- conda names are mapped to PyPI names where they differ (`pytorch` -> `torch`);
- system libraries conda ships (`openssl`, `libgcc-ng`, `cudatoolkit`...) are
  skipped: instances use the machine's;
- `python=X.Y` becomes a specifier the provisioner matches against the
  interpreters it has.

A spec that cannot be expressed for pip (`a|b` alternatives, a version that is
not a version) is a `CondaSpecError` naming the entry, raised at create time.

One thing conda knows that PyPI's metadata does not: a compiled package built
against NumPy 1.x cannot run beside NumPy 2 (`ValueError: numpy.dtype size
changed`). Conda's builds of such a release say `numpy<2`; its PyPI wheels say
only `numpy>=1.x`, so uv would pick NumPy 2 (`scikit-learn=1.2.2` with `numpy`
unpinned: Azure's inference-schema sample). `numpy_1_reasons` finds the pins
that need NumPy 1.x (`NUMPY_2_BUILDS`), and the environment then installs with
the constraint `numpy<2`, unless the user pinned numpy themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, Specifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

# Conda package name -> PyPI project name, where they differ.
PYPI_NAMES = {
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "pytorch-gpu": "torch",
    "py-xgboost": "xgboost",
    "py-xgboost-cpu": "xgboost",
    "py-xgboost-gpu": "xgboost",
    "py-lightgbm": "lightgbm",
    "py-catboost": "catboost",
    "msgpack-python": "msgpack",
    "matplotlib-base": "matplotlib",
    "py-opencv": "opencv-python",
    "opencv": "opencv-python",
    "pytables": "tables",
    "python-graphviz": "graphviz",
    "tensorflow-base": "tensorflow",
    "pyqt": "pyqt5",
    "python-flatbuffers": "flatbuffers",
}

# Conda packages that are not Python packages (or are the toolchain itself): never from PyPI.
SYSTEM_PACKAGES = frozenset(
    {
        "python",
        "pip",
        "setuptools",
        "wheel",
        "blas",
        "bzip2",
        "c-ares",
        "ca-certificates",
        "cpuonly",
        "cudatoolkit",
        "cuda-toolkit",
        "cudnn",
        "expat",
        "gettext",
        "gmp",
        "icu",
        "intel-openmp",
        "jpeg",
        "krb5",
        "ld-impl-linux-64",
        "llvm-openmp",
        "lz4-c",
        "mkl",
        "ncurses",
        "nomkl",
        "openblas",
        "openssl",
        "pcre",
        "pcre2",
        "readline",
        "sqlite",
        "tk",
        "tzdata",
        "xz",
        "yaml",
        "zlib",
        "zstd",
    }
)
# The first release of each compiled package (one that uses NumPy's C API) whose wheels
# were built against NumPy 2, and so run with NumPy 1.x and 2 alike; any older release was
# built against NumPy 1.x and fails to import beside NumPy 2. Each version is from the
# package's release notes, as listed in NumPy's tracking issue numpy/numpy#26191.
# xgboost and lightgbm are not here: they load their library with ctypes, not the C API.
NUMPY_2_BUILDS = {
    "scikit-learn": Version("1.4.2"),  # 1.4.2: "only includes support for numpy 2"
    "scipy": Version("1.13.0"),  # 1.13.0: "aims to support NumPy 2.0.0"
    "pandas": Version("2.2.2"),  # 2.2.2: "now compatible with numpy 2.0"
    "matplotlib": Version("3.8.4"),  # 3.8.4: "released wheels are built against numpy 2"
    "h5py": Version("3.11.0"),  # 3.11: "now compatible with Numpy 2.0"
    "pyarrow": Version("16.0.0"),  # 16.0.0 closed apache/arrow#39532 (wheels built on NumPy 2)
    "numba": Version("0.60.0"),  # 0.60.0: "binary support for NumPy 2.0"
    "statsmodels": Version("0.14.2"),  # 0.14.2: "allow statsmodels to run ... using NumPy 2"
    "scikit-image": Version("0.23.1"),  # 0.23.0 was never released; 0.23 builds on NumPy 2
    "tensorflow": Version("2.18.0"),  # 2.18.0: "compiled with NumPy 2.0 by default"
    "torch": Version("2.3.0"),  # "the first version that supports NumPy 2.0" (pytorch#132179)
}
NUMPY_1 = "numpy<2"  # the uv constraint an environment with such a pin gets
OPERATORS = ("===", "==", "!=", "<=", ">=", "~=", "<", ">")
SPEC_RE = re.compile(r"^(?P<name>[A-Za-z0-9_][A-Za-z0-9_.\-]*)\s*(?P<rest>.*)$")
BRACKET_RE = re.compile(r"^(?P<head>[^\[]*)\[(?P<body>.*)\]\s*$")
BRACKET_ITEM_RE = re.compile(r"(\w+)\s*=\s*(?:'([^']*)'|\"([^\"]*)\"|([^,\s]+))")


class CondaSpecError(ValueError):
    """A conda file or match spec that cannot become pip requirements; says which entry."""


@dataclass(frozen=True)
class CondaRequirements:
    """What a conda file asks for, as pip sees it."""

    requirements: tuple[str, ...] = ()  # PEP 508 strings, in file order
    python: str = ""  # a PEP 440 specifier for the interpreter, "" when not asked
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class MatchSpec:
    """One conda dependency: its conda name and a PEP 440 specifier ("" = any version)."""

    conda_name: str
    specifier: str
    build: str = ""

    @property
    def pypi_name(self) -> str:
        name = canonicalize_name(self.conda_name)
        return PYPI_NAMES.get(name, name)

    def requirement(self) -> str:
        return f"{self.pypi_name}{self.specifier}"


def _clause(text: str, fuzzy: bool) -> str:
    """One conda version clause (`>=1.2`, `1.2.*`, `1.2`) as a PEP 440 specifier."""
    text = text.strip()
    op = next((o for o in OPERATORS if text.startswith(o)), "")
    version = text[len(op) :].strip()
    if op == "" and version.startswith("="):  # `numpy =1.2` inside a space-separated spec
        version, fuzzy = version[1:], True
    if version in ("", "*"):
        return ""
    if version.endswith("*"):
        version = version.rstrip("*").rstrip(".")
        if op in ("", "==", "!="):
            return f"{op or '=='}{version}.*"
        # `>=1.2.*` means `>=1.2` to conda
    elif op == "":
        op = "=="
        if fuzzy:
            version += ".*"
    elif op == "~=" and version.count(".") == 0:
        raise CondaSpecError(f"'~={version}' needs at least two version parts for pip")
    spec = f"{op}{version}"
    Specifier(spec)  # raises InvalidSpecifier for a version pip cannot read
    return spec


def _without_channel(entry: str) -> str:
    text = entry.split("#", 1)[0].strip()
    return text.split("::", 1)[1] if "::" in text else text


def package_name(entry: str) -> str:
    """The conda package name of a dependency line, as written ("" if there is none)."""
    match = SPEC_RE.match(_without_channel(entry))
    return match["name"] if match else ""


def is_system_package(name: str) -> bool:
    """Whether a conda package is a system library or the toolchain (never from PyPI).

    Decided on the name alone: their versions (`openssl=1.1.1n`) need not be PEP 440.
    """
    canonical = canonicalize_name(name)
    return canonical in SYSTEM_PACKAGES or name.startswith(("lib", "_"))


def parse_match_spec(entry: str) -> MatchSpec:
    """Read one conda match spec (`numpy>=1.2`, `pkg=1.0=build`, `chan::pkg 1.0 build`)."""
    text = _without_channel(entry)
    bracket_version = ""
    bracket_build = ""
    if match := BRACKET_RE.match(text):
        text = match["head"].strip()
        for key, *values in BRACKET_ITEM_RE.findall(match["body"]):
            value = next((v for v in values if v), "")
            if key == "version":
                bracket_version = value
            elif key == "build":
                bracket_build = value
    match = SPEC_RE.match(text)
    if match is None:
        raise CondaSpecError(f"conda dependency {entry!r} is not a package spec")
    name, rest = match["name"], match["rest"].strip()
    fuzzy = False
    build = bracket_build
    if rest.startswith("=") and not rest.startswith("=="):
        version, _, build = rest[1:].partition("=")
        fuzzy = not build  # `pkg=1.2` is 1.2.*; `pkg=1.2=build` is exactly 1.2
    elif rest.startswith("==") and "=" in rest[2:]:
        version, _, build = rest[2:].partition("=")
        version = "==" + version
    else:
        tokens = rest.split()
        if len(tokens) > 1 and tokens[0] in OPERATORS:
            tokens = [tokens[0] + tokens[1], *tokens[2:]]
        if len(tokens) > 2:
            raise CondaSpecError(f"conda dependency {entry!r}: expected `name [version [build]]`")
        version = tokens[0] if tokens else ""
        build = tokens[1] if len(tokens) > 1 else build
    version = version or bracket_version
    if "|" in version:
        raise CondaSpecError(
            f"conda dependency {entry!r} lists alternatives ('|'), which pip cannot express; "
            "pick one version range"
        )
    try:
        clauses = [_clause(part, fuzzy) for part in version.split(",")] if version else []
    except (InvalidSpecifier, CondaSpecError) as exc:
        raise CondaSpecError(
            f"conda dependency {entry!r}: version {version!r} is not one pip understands ({exc})"
        ) from None
    return MatchSpec(name, ",".join(c for c in clauses if c), build.strip())


def _pip_entries(lines: Iterable[Any], warnings: list[str]) -> list[str]:
    """The `- pip:` list: PEP 508 requirements or URLs; pip options are reported, not passed."""
    kept: list[str] = []
    for raw in lines:
        line = str(raw).split(" #", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            warnings.append(f"pip option {line!r} in the conda file is ignored")
            continue
        try:
            Requirement(line)
        except InvalidRequirement as exc:
            if "://" not in line and not line.startswith(("git+", "./", "/")):
                raise CondaSpecError(f"pip requirement {line!r} is invalid: {exc}") from None
        kept.append(line)
    return kept


def parse_conda_file(text: str) -> CondaRequirements:
    """The pip requirements, python specifier and caveats of a conda environment file."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CondaSpecError(f"conda file is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CondaSpecError("conda file must be a mapping with a `dependencies:` list")
    deps = data.get("dependencies") or []
    if not isinstance(deps, list):
        raise CondaSpecError("conda file: `dependencies` must be a list")
    requirements: list[str] = []
    warnings: list[str] = []
    python = ""
    translated: list[str] = []
    skipped: list[str] = []
    builds = 0
    for dep in deps:
        if isinstance(dep, dict):
            if set(dep) - {"pip"}:
                raise CondaSpecError(f"conda file: unexpected entry {dep!r} in dependencies")
            requirements.extend(_pip_entries(dep.get("pip") or [], warnings))
            continue
        entry = str(dep)
        name = package_name(entry)
        canonical = canonicalize_name(name)
        if is_system_package(name) and canonical != "python":
            if canonical not in ("pip", "setuptools", "wheel"):  # uv provides these
                skipped.append(name)
            continue
        spec = parse_match_spec(entry)
        builds += bool(spec.build)
        if canonical == "python":
            python = spec.specifier
        else:
            requirements.append(spec.requirement())
            translated.append(f"{entry} -> {spec.requirement()}")
    if translated:
        warnings.append("conda packages installed from PyPI: " + "; ".join(translated))
    if skipped:
        warnings.append(
            "conda system packages skipped (instances use the machine's): " + ", ".join(skipped)
        )
    if builds:
        warnings.append(f"conda build strings ignored for {builds} package(s)")
    return CondaRequirements(tuple(requirements), python, tuple(warnings))


def _release_after(prefix: str) -> Version:
    """The first version past a prefix's series: `1.2.2` -> 1.2.3, `1` -> 2."""
    *head, last = Version(prefix).release
    return Version(".".join(str(part) for part in (*head, last + 1)))


def _all_before(specifier: SpecifierSet, first: Version) -> bool:
    """Whether a specifier admits only versions older than `first`: one clause caps it
    below (`==1.2.2`, `==1.2.*`, `~=1.2.0`, `<1.3`, `<=1.3.2`); lower bounds never do."""
    for clause in specifier:
        version = clause.version
        try:
            if clause.operator in ("==", "===") and version.endswith(".*"):
                capped = _release_after(version[:-2]) <= first
            elif clause.operator in ("==", "==="):
                capped = Version(version) < first
            elif clause.operator == "~=":  # ~=1.2.0 is >=1.2.0, ==1.2.*
                capped = _release_after(version.rsplit(".", 1)[0]) <= first
            elif clause.operator == "<":
                capped = Version(version) <= first
            elif clause.operator == "<=":
                capped = Version(version) < first
            else:
                capped = False
        except InvalidVersion:  # `===` takes any string
            capped = False
        if capped:
            return True
    return False


def _shown(specifier: SpecifierSet) -> str:
    """A pin as a person reads it: `==1.2.2.*` is 1.2.2 (conda's `=1.2.2`), else as written."""
    clauses = list(specifier)
    if len(clauses) == 1 and clauses[0].operator == "==":
        return clauses[0].version.removesuffix(".*")
    return str(specifier)


def numpy_1_reasons(requirements: Iterable[str]) -> tuple[str, ...]:
    """Why these pip requirements need NumPy 1.x: one reason per requirement that admits
    only releases built against it (`NUMPY_2_BUILDS`), e.g. "scikit-learn 1.2.2 predates
    its NumPy 2 build (1.4.2)". None when a requirement pins numpy itself: the user's
    choice is never overridden. A requirement pip cannot read (a path, a URL) is no pin."""
    reasons: list[str] = []
    for line in requirements:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        name = canonicalize_name(requirement.name)
        if name == "numpy" and (requirement.specifier or requirement.url):
            return ()
        first = NUMPY_2_BUILDS.get(name)
        if first is None or requirement.url or not _all_before(requirement.specifier, first):
            continue
        pin = _shown(requirement.specifier)
        reasons.append(f"{name} {pin} predates its NumPy 2 build ({first})")
    return tuple(reasons)
