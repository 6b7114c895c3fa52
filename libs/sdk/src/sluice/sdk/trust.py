"""`sluice tls trust`: make ordinary clients trust the local platform's CA, as mkcert does.

The gateway's certificate is signed by a CA made for this platform
(`<state_dir>/tls/ca.crt`). Clients that trust it can use the scoring URI
`show` prints with no `--cacert`:

- the system store, when we run as root: the CA is copied to the distribution's
  anchors folder and the store refreshed (`update-ca-certificates` on
  Debian/Ubuntu/Alpine, `update-ca-trust` on Fedora/RHEL). curl, Python's
  `urllib`/`ssl`, Go and most OpenSSL programs read that store.
- browsers' NSS stores (Chrome/Chromium's `~/.pki/nssdb`, Firefox profiles'
  `cert9.db`), the ones that exist, with NSS's `certutil` as mkcert does; without
  `certutil` the output says which package brings it and nothing is changed there.
- always, a bundle next to the CA (`trust-bundle.pem`: the system's CAs plus
  ours) for clients with their own CA list (`requests` uses certifi) and for
  users who are not root: the environment variables that point each client at
  it are printed.

Every step says what it changed; nothing is changed silently.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


@dataclass(frozen=True)
class SystemStore:
    """A distribution's folder of extra trusted CAs and the command that rebuilds the store."""

    anchors: Path
    refresh: tuple[str, ...]


SYSTEM_STORES = (
    SystemStore(Path("/usr/local/share/ca-certificates"), ("update-ca-certificates",)),
    SystemStore(Path("/etc/pki/ca-trust/source/anchors"), ("update-ca-trust", "extract")),
)
BUNDLE = "trust-bundle.pem"
CERTUTIL_PACKAGES = "libnss3-tools on Debian/Ubuntu, nss-tools on Fedora/RHEL"


class TrustError(Exception):
    """The CA cannot be trusted as asked (no CA yet, refresh command failed)."""


def anchor_name(ca_pem: bytes) -> str:
    """`sluice-<fingerprint>.crt`: one file per platform CA, so several platforms coexist."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    return f"sluice-{hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()[:12]}.crt"


def system_ca_file() -> Path | None:
    """The CA file OpenSSL uses by default (ignoring SSL_CERT_FILE, which may be our bundle)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def write_bundle(ca: Path) -> Path:
    """`<tls>/trust-bundle.pem`: the system CAs (if any) followed by the platform CA."""
    ca_pem = ca.read_bytes()
    system = system_ca_file()
    base = system.read_bytes() if system else b""
    if ca_pem.strip() in base:
        base = base.replace(ca_pem.strip(), b"")
    bundle = ca.parent / BUNDLE
    tmp = bundle.with_suffix(".tmp")
    tmp.write_bytes(base.rstrip(b"\n") + b"\n" + ca_pem if base.strip() else ca_pem)
    tmp.replace(bundle)
    return bundle


SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def find_system_store() -> SystemStore | None:
    """The first store of this machine whose refresh command is installed (looked for in
    the sbin folders too: a normal user's PATH on Debian has none, and it is that user who
    is told the `sudo` line)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    for store in SYSTEM_STORES:
        if shutil.which(store.refresh[0], path=path) is not None:
            return store
    return None


def install_in_system_store(ca: Path, store: SystemStore) -> Path:
    """Copy the CA into `store.anchors` and rebuild the store; returns the anchor file."""
    store.anchors.mkdir(parents=True, exist_ok=True)
    anchor = store.anchors / anchor_name(ca.read_bytes())
    shutil.copyfile(ca, anchor)
    anchor.chmod(0o644)
    done = subprocess.run(list(store.refresh), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise TrustError(
            f"{' '.join(store.refresh)} failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()}"
        )
    return anchor


def nss_databases(home: Path) -> list[Path]:
    """The browsers' NSS databases of this user that exist (sql: format, `cert9.db`)."""
    candidates = [
        home / ".pki" / "nssdb",
        home / "snap" / "chromium" / "current" / ".pki" / "nssdb",
        *sorted((home / ".mozilla" / "firefox").glob("*")),
        *sorted((home / "snap" / "firefox" / "common" / ".mozilla" / "firefox").glob("*")),
    ]
    return [d for d in candidates if (d / "cert9.db").is_file()]


def install_in_nss(ca: Path, databases: list[Path], certutil: str) -> list[Path]:
    """Add the CA to each NSS database as a trusted TLS issuer (`-t C,,`); returns them."""
    nickname = anchor_name(ca.read_bytes()).removesuffix(".crt")
    for database in databases:
        argv = [certutil, "-A", "-d", f"sql:{database}", "-t", "C,,", "-n", nickname, "-i", str(ca)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise TrustError(
                f"certutil could not add the CA to {database} (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()}"
            )
    return databases


def trust_browsers(ca: Path, home: Path) -> str:
    """Trust `ca` in the browsers' NSS databases; the line saying what happened."""
    databases = nss_databases(home)
    if not databases:
        return (
            f"Browsers: no NSS database under {home} (~/.pki/nssdb appears once Chrome or "
            "Chromium has run, Firefox profiles under ~/.mozilla/firefox); run this again then."
        )
    certutil = shutil.which("certutil")
    if certutil is None:
        names = ", ".join(str(d) for d in databases)
        return (
            f"Browsers: not changed: NSS's certutil is not installed ({CERTUTIL_PACKAGES}); "
            f"install it and run this again to trust the gateway in {names}."
        )
    install_in_nss(ca, databases, certutil)
    names = ", ".join(str(d) for d in databases)
    return f"Browsers: added the CA to {names} (restart the browser to pick it up)."


def trust(ca: Path, *, system: bool | None = None, home: Path | None = None) -> list[str]:
    """Trust `ca` for this user (bundle) and, when root or `system`, machine-wide.

    Returns the lines to print: what changed, and what is left for the user to do.
    """
    if not ca.is_file():
        raise TrustError(f"no local CA at {ca}: start the platform first (`sluice up`)")
    lines = []
    store = find_system_store()
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    want_system = is_root if system is None else system
    if want_system and store is None:
        raise TrustError(
            "no system trust store tool found (update-ca-certificates or update-ca-trust)"
        )
    if want_system and store is not None:
        if not is_root:
            raise TrustError("the system trust store needs root: run as root, or --no-system")
        anchor = install_in_system_store(ca, store)
        lines.append(
            f"System store: added {anchor} and ran `{' '.join(store.refresh)}`; "
            "curl, Python urllib, Go and other OpenSSL clients now trust the gateway."
        )
    elif store is not None:
        anchor = store.anchors / anchor_name(ca.read_bytes())
        why = "--no-system" if is_root else "not root"
        lines.append(
            f"System store unchanged ({why}). To trust the gateway machine-wide: "
            f"sudo cp {ca} {anchor} && sudo {' '.join(store.refresh)}"
        )
    lines.append(trust_browsers(ca, home or Path.home()))
    bundle = write_bundle(ca)
    lines.append(f"Bundle: wrote {bundle} (the system CAs plus the platform CA).")
    lines.append(
        "Clients with their own CA list, or all clients without the system store: "
        f"export SSL_CERT_FILE={bundle} REQUESTS_CA_BUNDLE={bundle} "
        f"CURL_CA_BUNDLE={bundle} NODE_EXTRA_CA_CERTS={ca}"
    )
    return lines
