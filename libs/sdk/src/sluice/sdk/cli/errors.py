"""Errors the CLI prints as one line (no traceback) before exiting non-zero."""

from __future__ import annotations


class CliError(Exception):
    """A problem the user can fix; the message says how."""
