"""Loading another benchmark's helpers (bench/<name>/run.py is a script, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def bench_module(name: str) -> Any:
    """bench/<name>/run.py as a module, loaded once (e.g. bench/traffic's Envoy and wrk)."""
    key = f"bench_{name}_shared"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, BENCH / name / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
