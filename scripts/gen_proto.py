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
from google.api import annotations_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = PROTO_ROOT / "src"
PACKAGE = Path("sluice") / "v1"
# Every sluice.v1 file with its imports (google/api/http.proto for the REST mapping, the
# well-known types) and comments: what Envoy's gRPC-JSON transcoder reads and what the
# OpenAPI document is generated from (sluice.common.openapi).
DESCRIPTOR_SET = "sluice_api.binpb"


def generate(out: Path) -> None:
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(annotations_pb2.__file__).parents[2]  # google/api/*.proto ship with it
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"-I{googleapis}",
        f"--descriptor_set_out={out / PACKAGE / DESCRIPTOR_SET}",
        "--include_imports",
        "--include_source_info",
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
