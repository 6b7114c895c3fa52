"""`sluice.sdk.trust`: the bundle and the system store, on a throwaway CA and anchors folder."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.sdk.trust import (
    CERTUTIL_PACKAGES,
    SystemStore,
    TrustError,
    anchor_name,
    find_system_store,
    install_in_system_store,
    system_ca_file,
    trust,
    write_bundle,
)
from sluice.traffic.tls import ensure_local_certificate


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    ensure_local_certificate(tmp_path / "tls", "sluice.localhost")
    return tmp_path / "tls" / "ca.crt"


def test_bundle_holds_the_system_cas_and_ours_once(ca: Path) -> None:
    bundle = write_bundle(ca)
    assert write_bundle(ca) == bundle  # again: same content, not appended twice
    text = bundle.read_bytes()
    assert text.count(ca.read_bytes().strip()) == 1
    system = system_ca_file()
    if system is not None:
        assert text.startswith(system.read_bytes()[:100])
    ssl.create_default_context(cafile=str(bundle))  # loads as a CA file


@pytest.mark.integration  # starts a process
def test_system_store_gets_one_file_per_ca_and_is_refreshed(ca: Path, tmp_path: Path) -> None:
    marker = tmp_path / "refreshed"
    store = SystemStore(
        tmp_path / "anchors", (sys.executable, "-c", f"open({str(marker)!r}, 'w').close()")
    )
    anchor = install_in_system_store(ca, store)
    assert anchor == tmp_path / "anchors" / anchor_name(ca.read_bytes())
    assert anchor.read_bytes() == ca.read_bytes() and marker.exists()
    assert anchor.name.startswith("sluice-") and anchor.suffix == ".crt"


@pytest.mark.integration  # starts a process
def test_failed_refresh_is_an_error_with_its_output(ca: Path, tmp_path: Path) -> None:
    store = SystemStore(
        tmp_path / "anchors", (sys.executable, "-c", "import sys; sys.exit('store is read-only')")
    )
    with pytest.raises(TrustError, match="store is read-only"):
        install_in_system_store(ca, store)


def test_without_a_platform_ca_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(TrustError, match="no local CA"):
        trust(tmp_path / "tls" / "ca.crt", system=False)
    assert not (tmp_path / "tls").exists()


def test_no_system_writes_only_the_bundle_and_says_so(ca: Path, tmp_path: Path) -> None:
    lines = trust(ca, system=False, home=tmp_path / "home")
    if find_system_store() is not None:
        assert "System store unchanged" in lines[0] and "sudo cp" in lines[0]
    assert any(f"SSL_CERT_FILE={ca.parent / 'trust-bundle.pem'}" in line for line in lines)


@pytest.mark.integration  # starts a process
def test_browsers_nss_database_gets_the_ca(ca: Path, tmp_path: Path) -> None:
    """Chrome's ~/.pki/nssdb (made here by NSS's own certutil) trusts the CA for TLS."""
    certutil = shutil.which("certutil")
    if certutil is None:
        pytest.skip(f"NSS's certutil is not installed ({CERTUTIL_PACKAGES})")
    home = tmp_path / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run([certutil, "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True)
    lines = trust(ca, system=False, home=home)
    assert f"Browsers: added the CA to {nssdb}" in "\n".join(lines)
    nickname = anchor_name(ca.read_bytes()).removesuffix(".crt")
    listed = subprocess.run(
        [certutil, "-L", "-d", f"sql:{nssdb}"], check=True, capture_output=True, text=True
    ).stdout
    assert any(
        line.startswith(nickname) and line.split()[-1] == "C,," for line in listed.splitlines()
    )
    trust(ca, system=False, home=home)  # again: the same nickname, still one entry
    listed = subprocess.run(
        [certutil, "-L", "-d", f"sql:{nssdb}"], check=True, capture_output=True, text=True
    ).stdout
    assert listed.count(nickname) == 1


def test_without_certutil_browsers_are_left_alone_and_the_package_named(
    ca: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".mozilla" / "firefox" / "abc.default").mkdir(parents=True)
    db = home / ".mozilla" / "firefox" / "abc.default" / "cert9.db"
    db.write_bytes(b"not touched")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    lines = trust(ca, system=False, home=home)
    line = next(line for line in lines if line.startswith("Browsers:"))
    assert "certutil is not installed (libnss3-tools on Debian/Ubuntu" in line
    assert str(db.parent) in line and db.read_bytes() == b"not touched"


def test_no_browser_database_is_said(ca: Path, tmp_path: Path) -> None:
    lines = trust(ca, system=False, home=tmp_path / "nobody")
    assert any(line.startswith("Browsers: no NSS database") for line in lines)
