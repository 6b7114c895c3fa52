"""Generate docs/events/asyncapi.{json,yaml} with `faststream docs gen` (`make events-doc`).

The document comes from scripts/asyncapi_app.py: the event catalogue and the
services' real subscribers. It is re-serialized with sorted keys so the same
code always gives the same bytes. With --check, fail if the checked-in copy
is stale (CI runs it from `make lint`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "events"


def generate() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "asyncapi.json"
        subprocess.run(
            [
                sys.executable, "-m", "faststream", "docs", "gen", "--factory",
                "--app-dir", str(ROOT / "scripts"), "asyncapi_app:build", "--out", str(raw),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        document = json.loads(raw.read_text())
    return {
        "asyncapi.json": json.dumps(document, indent=2, sort_keys=True) + "\n",
        "asyncapi.yaml": yaml.safe_dump(document, sort_keys=True, allow_unicode=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if docs/events is stale")
    fresh = generate()
    if not parser.parse_args().check:
        OUT.mkdir(parents=True, exist_ok=True)
        for name, text in fresh.items():
            (OUT / name).write_text(text)
        print(f"generated {OUT}")
        return
    stale = [
        n for n, text in fresh.items() if not (OUT / n).is_file() or (OUT / n).read_text() != text
    ]
    if stale:
        sys.exit(f"docs/events is stale ({', '.join(stale)}): run `make events-doc`")
    print("docs/events is up to date")


if __name__ == "__main__":
    main()
