"""The gateway's TLS certificate: the user's, or a local CA and a wildcard certificate.

On first start without a user certificate, `<state_dir>/tls/` gets `ca.crt`
(give it to clients: `curl --cacert`), `ca.key`, and `gateway.crt` /
`gateway.key` for `*.<domain>`, `<domain>`, `localhost` and 127.0.0.1/::1. The
certificate reaches Envoy over SDS, so replacing the files (checked on every
resync) rotates it without a restart.
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

from sluice.common.pki import new_ca, pem_private_key
from sluice.traffic.domain import TlsMaterial

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
GATEWAY_CERT = "gateway.crt"
GATEWAY_KEY = "gateway.key"
VALIDITY = timedelta(days=825)  # the longest lifetime clients accept for a leaf


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def ensure_local_certificate(folder: Path, domain: str) -> tuple[Path, Path]:
    """Create the local CA and the gateway certificate unless they exist; (cert, key) paths."""
    cert_path, key_path = folder / GATEWAY_CERT, folder / GATEWAY_KEY
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC) - timedelta(minutes=5)
    ca_cert, ca_key = new_ca(f"Sluice local CA ({domain})")
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
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write_private(folder / CA_KEY, pem_private_key(ca_key))
    (folder / CA_CERT).write_bytes(ca_cert.public_bytes(pem))
    _write_private(key_path, pem_private_key(key))
    # The chain: leaf first, then the CA, so clients that know the CA verify it.
    cert_path.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    return cert_path, key_path


def load_material(cert_path: Path, key_path: Path) -> TlsMaterial:
    return TlsMaterial(certificate_chain=cert_path.read_bytes(), private_key=key_path.read_bytes())
