"""`sluice.sdk.trust`: the bundle and the system store, on a throwaway CA and anchors folder."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import pytest

from sluice.sdk.trust import (
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


def test_system_store_gets_one_file_per_ca_and_is_refreshed(ca: Path, tmp_path: Path) -> None:
    marker = tmp_path / "refreshed"
    store = SystemStore(
        tmp_path / "anchors", (sys.executable, "-c", f"open({str(marker)!r}, 'w').close()")
    )
    anchor = install_in_system_store(ca, store)
    assert anchor == tmp_path / "anchors" / anchor_name(ca.read_bytes())
    assert anchor.read_bytes() == ca.read_bytes() and marker.exists()
    assert anchor.name.startswith("sluice-") and anchor.suffix == ".crt"


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


def test_no_system_writes_only_the_bundle_and_says_so(ca: Path) -> None:
    lines = trust(ca, system=False)
    if find_system_store() is not None:
        assert "System store unchanged" in lines[0] and "sudo cp" in lines[0]
    assert any(f"SSL_CERT_FILE={ca.parent / 'trust-bundle.pem'}" in line for line in lines)
