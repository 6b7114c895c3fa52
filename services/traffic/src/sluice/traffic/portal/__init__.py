"""The portal: static HTML/JS/CSS that the management listener serves under /portal/.

No build step and no Node: plain ES modules and one vendored charting library
(uPlot, MIT, `static/vendor/`). The pages call the REST API on the same origin.
"""

from __future__ import annotations

from importlib import resources

from sluice.traffic.domain import StaticFile

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


def files(prefix: str = "/portal/") -> tuple[StaticFile, ...]:
    """Every file under static/, by URL path; index.html also answers `prefix` itself."""
    root = resources.files(__name__) / "static"
    found: list[StaticFile] = []

    def walk(folder: object, rel: str) -> None:
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):  # type: ignore[attr-defined]
            if entry.is_dir():
                walk(entry, f"{rel}{entry.name}/")
                continue
            suffix = "." + entry.name.rsplit(".", 1)[-1]
            if suffix not in TYPES:
                continue
            body = entry.read_bytes()
            found.append(StaticFile(prefix + rel + entry.name, TYPES[suffix], body))
            if rel == "" and entry.name == "index.html":
                found.append(StaticFile(prefix, TYPES[suffix], body))

    walk(root, "")
    return tuple(found)
