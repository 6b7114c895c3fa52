"""`sluice ...` in the test's own process (the CLI's real entry point, `main`), with its
exit code, standard output and standard error.

A CLI process costs its start (Python and the CLI's imports: most of a second, more on a
busy machine) on every call; tests that make dozens of calls run them here instead. What
a child would have is given to each call: its environment variables (`env`), its working
directory (`cwd`) and a terminal `COLUMNS` wide.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from sluice.sdk.cli import main
from sluice.sdk.cli import output as cli_output


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
        self._capsys = capsys
        self._monkeypatch = monkeypatch

    def complete(
        self, *args: str, env: Mapping[str, str | None] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """What `subprocess.run(["sluice", *args], capture_output=True, text=True, env=...,
        cwd=...)` would answer, run here; `env`: the variables that differ from this
        process's (None: not set)."""
        patch = self._monkeypatch
        for name, value in (env or {}).items():
            if value is None:
                patch.delenv(name, raising=False)
            else:
                patch.setenv(name, value)
        columns = (env or {}).get("COLUMNS") or ""
        if columns.isdigit():  # the consoles were made at import
            for console in (cli_output.console, cli_output.err_console):
                patch.setattr(console, "width", int(columns))
        if cwd is not None:
            patch.chdir(cwd)
        self._capsys.readouterr()
        patch.setattr(sys, "argv", ["sluice", *args])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            if isinstance(exit_.code, str):  # as the interpreter would: printed, status 1
                print(exit_.code, file=sys.stderr)
                code = 1
            else:
                code = int(exit_.code or 0)
        out, err = self._capsys.readouterr()
        return subprocess.CompletedProcess(["sluice", *args], code, out, err)

    def run(self, *args: str) -> tuple[int, str, str]:
        """Exit code, standard output, and standard error on one line."""
        done = self.complete(*args)
        return done.returncode, done.stdout, " ".join(done.stderr.split())

    def json(self, *args: str) -> Any:
        code, out, err = self.run(*args, "-o", "json")
        assert code == 0, err
        return json.loads(out)

    def fails(self, *args: str) -> str:
        code, _, err = self.run(*args)
        assert code == 1, err
        return err
