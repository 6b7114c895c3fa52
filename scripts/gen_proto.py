"""Generate Python code for proto/sluice/v1 into proto/src (`make proto`).

With --check, generate into a temporary folder and fail if proto/src differs:
CI uses it to catch generated code that is older than its .proto sources.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = PROTO_ROOT / "src"
PACKAGE = Path("sluice") / "v1"


def generate(out: Path) -> None:
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    (out / PACKAGE / "__init__.py").write_text(
        '"""Generated from proto/sluice/v1 by `make proto`; do not edit."""\n'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if proto/src is stale")
    check = parser.parse_args().check
    if not check:
        shutil.rmtree(OUT / PACKAGE, ignore_errors=True)
        (OUT / PACKAGE).mkdir(parents=True)
        generate(OUT)
        print(f"generated {OUT / PACKAGE}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        (fresh / PACKAGE).mkdir(parents=True)
        generate(fresh)
        cmp = filecmp.dircmp(fresh / PACKAGE, OUT / PACKAGE, ignore=["__pycache__"])
        stale = cmp.left_only + cmp.right_only + cmp.diff_files
        if stale:
            sys.exit(
                f"generated protobuf code is stale ({', '.join(sorted(stale))}): run `make proto`"
            )
    print("generated protobuf code is up to date")


if __name__ == "__main__":
    main()
