"""How a deployment's environment reaches the platform's packages, and the way round it.

An environment built for a deployment (environments.py) is a virtualenv whose
site-packages holds PTH, a `.pth` line that appends the platform's own site-packages to
`sys.path`: after the environment's, so the deployment's pins win for its code. The
platform's code that runs in the environment (the batch worker, the inference server)
needs the opposite for its own imports: a model's requirements pinning an old
`typing-extensions` would otherwise break the platform's pydantic (`ImportError: cannot
import name 'Sentinel'`).
`platform_first()` puts the platform's site-packages first while those imports run;
what they load stays loaded (one copy per process), and the deployment's code imports
everything else from its own environment as before. Neither imports numpy, pandas or
scikit-learn there (they import them later, when needed): those the deployment shares
with its code stay its own.

Only the standard library here: whatever is imported before `platform_first()` comes
from the environment.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

PTH = "zz_sluice_platform.pth"  # sorts last: read after the environment's own .pth files
_LINE = re.compile(r"addsitedir\((['\"])(.+?)\1\)")


def link_line(platform_site: str) -> str:
    """The `.pth` line that appends `platform_site` to `sys.path`."""
    return f"import site; site.addsitedir({platform_site!r})\n"


def platform_site() -> str | None:
    """The platform's site-packages this interpreter was linked to (None: it is the
    platform's own interpreter, or an environment with a copy of its own)."""
    for entry in sys.path:
        pth = Path(entry) / PTH
        if pth.is_file():
            found = _LINE.search(pth.read_text())
            if found:
                return found.group(2)
    return None


@contextlib.contextmanager
def platform_first() -> Iterator[None]:
    """Imports in this block find the platform's packages before the environment's."""
    site = platform_site()
    if site is None or site not in sys.path:
        yield
        return
    index = sys.path.index(site)
    sys.path.insert(0, sys.path.pop(index))
    try:
        yield
    finally:
        sys.path.remove(site)
        sys.path.insert(index, site)
