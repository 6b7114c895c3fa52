"""Another tenant's deployment: keeps a secret in its code folder and its home."""

import os
from pathlib import Path


def init():
    Path(os.environ["HOME"], "victim-home.txt").write_text(os.environ["VICTIM_SECRET"])


def run(raw_data):
    return {"ok": True}
