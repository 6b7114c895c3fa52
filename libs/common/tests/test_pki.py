"""The platform CA's leaves are renewed before they expire, by the same CA (sluice.common.pki)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from sluice.common.pki import (
    ALS_SERVER,
    LEAF_VALIDITY,
    XDS_SERVER,
    PlatformPki,
    expires_soon,
    main,
)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_a_leaf_near_its_end_is_issued_again_by_the_same_ca(tmp_path: Path) -> None:
    pki = PlatformPki(tmp_path / "pki")
    kept = pki.client("sluice-gateway")
    kept_bytes = kept.cert.read_bytes()
    short = pki.issue(XDS_SERVER, server=True, validity=timedelta(days=1))
    assert expires_soon(short.cert)
    old_key = short.key.read_bytes()
    ca = load(pki.ca_cert)
    ca_bytes = pki.ca_cert.read_bytes()

    renewed = pki.server(XDS_SERVER)  # as the traffic controller asks for it at its start

    leaf = load(renewed.cert)
    assert not expires_soon(renewed.cert)
    assert leaf.not_valid_after_utc > datetime.now(UTC) + LEAF_VALIDITY - timedelta(days=1)
    leaf.verify_directly_issued_by(ca)  # the same CA: every peer keeps trusting it
    assert renewed.key.read_bytes() != old_key  # a new key too
    assert pki.ca_cert.read_bytes() == ca_bytes
    # A leaf with time left is not touched.
    assert pki.client("sluice-gateway").cert.read_bytes() == kept_bytes


def test_an_unreadable_certificate_counts_as_expiring(tmp_path: Path) -> None:
    (tmp_path / "x.crt").write_text("not a certificate")
    assert expires_soon(tmp_path / "x.crt")
    assert expires_soon(tmp_path / "missing.crt")


def test_the_deploy_step_issues_again_the_leaves_near_their_end(tmp_path: Path) -> None:
    """`python -m sluice.common.pki FOLDER`, compose's one-shot and the Kubernetes operator's
    step, run again: a leaf near its end is issued again by the same CA, the others stay."""
    folder = tmp_path / "pki"
    main([str(folder)])
    pki = PlatformPki(folder)
    ca_bytes = pki.ca_cert.read_bytes()
    kept = pki.server(ALS_SERVER).cert.read_bytes()
    pki.issue("sluice-gateway", server=False, validity=timedelta(days=1))

    main([str(folder)])

    gateway = pki.client("sluice-gateway").cert
    assert not expires_soon(gateway)
    load(gateway).verify_directly_issued_by(load(pki.ca_cert))
    assert pki.ca_cert.read_bytes() == ca_bytes
    assert pki.server(ALS_SERVER).cert.read_bytes() == kept
