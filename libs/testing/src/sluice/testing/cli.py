"""`sluice ...` in the test's own process (the CLI's real entry point, `main`), with its
exit code, standard output and one-line standard error."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from sluice.sdk.cli import main


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
        self._capsys = capsys
        self._monkeypatch = monkeypatch

    def run(self, *args: str) -> tuple[int, str, str]:
        self._capsys.readouterr()
        self._monkeypatch.setattr(sys, "argv", ["sluice", *args])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        out, err = self._capsys.readouterr()
        return code, out, " ".join(err.split())

    def json(self, *args: str) -> Any:
        code, out, err = self.run(*args, "-o", "json")
        assert code == 0, err
        return json.loads(out)

    def fails(self, *args: str) -> str:
        code, _, err = self.run(*args)
        assert code == 1, err
        return err
