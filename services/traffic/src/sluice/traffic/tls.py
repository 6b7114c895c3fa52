"""The gateway's TLS certificate: the user's, or a local CA and a wildcard certificate.

On first start without a user certificate, `<state_dir>/tls/` gets `ca.crt`
(give it to clients: `curl --cacert`), `ca.key`, and `gateway.crt` /
`gateway.key` for `*.<domain>`, `<domain>`, `localhost` and 127.0.0.1/::1. The
certificate reaches Envoy over SDS, so replacing the files (checked on every
resync) rotates it without a restart. The local certificate renews itself that way:
when it has less than RENEW_BEFORE left, a new one is issued by the same local CA
(clients keep trusting `ca.crt`) at the next resync.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sluice.common.pki import expires_soon, new_ca, pem_private_key
from sluice.traffic.domain import TlsMaterial

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
GATEWAY_CERT = "gateway.crt"
GATEWAY_KEY = "gateway.key"
VALIDITY = timedelta(days=825)  # the longest lifetime clients accept for a leaf


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def _local_ca(folder: Path, domain: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The local CA: the one clients were given, or a new one on first start."""
    if (folder / CA_CERT).exists() and (folder / CA_KEY).exists():
        key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes()), key
    ca_cert, ca_key = new_ca(f"Sluice local CA ({domain})")
    _write_private(folder / CA_KEY, pem_private_key(ca_key))
    (folder / CA_CERT).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return ca_cert, ca_key


def ensure_local_certificate(
    folder: Path, domain: str, validity: timedelta = VALIDITY
) -> tuple[Path, Path]:
    """The local CA and the gateway certificate, created unless they exist and renewed when
    they expire within RENEW_BEFORE; (cert, key) paths. `validity`: tests make short ones."""
    cert_path, key_path = folder / GATEWAY_CERT, folder / GATEWAY_KEY
    if key_path.exists() and not expires_soon(cert_path):
        return cert_path, key_path
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC) - timedelta(minutes=5)
    ca_cert, ca_key = _local_ca(folder, domain)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName(f"*.{domain}"),
        x509.DNSName(domain),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{domain}")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    # Key first, then the chain (leaf, then the CA, so clients that know the CA verify it),
    # each replaced whole: a reader between the two sees an expiring certificate and
    # renews again rather than pairing a new certificate with the old key.
    _write_private(key_path, pem_private_key(key))
    chain = cert_path.with_name(cert_path.name + ".tmp")
    chain.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    chain.replace(cert_path)
    return cert_path, key_path


def load_material(cert_path: Path, key_path: Path) -> TlsMaterial:
    return TlsMaterial(certificate_chain=cert_path.read_bytes(), private_key=key_path.read_bytes())
