"""The platform's own certificate authority: mutual TLS between Envoy and the control plane.

The xDS stream carries every endpoint key and gateway secret, and the access-log
stream feeds metrics and costs, so both doors require a client certificate that
this CA signed (any local process could otherwise connect to them, deployment code
included). The CA lives in `<state dir>/pki/` (settings.pki_folder), a 0700 folder
of the platform's user, and is separate from the gateway's public CA (`tls/`), which
clients are given.

Each component asks for the identity it needs, which is created on first use:

- a server identity is named by its DNS name (`sluice-traffic`, `sluice-metrics`),
  which clients check instead of an address, so the same certificate serves on
  loopback, in compose and in Kubernetes;
- a client identity's common name is who it is: Envoy's node id (the traffic
  controller refuses an xDS stream whose node id is not its certificate's name) or
  `sluice-probe` (health checks of the platform's supervisor).

Creation is serialised by a lock file, so services started at the same time share one
CA. A leaf that expires within RENEW_BEFORE is issued again (a new key, the same CA)
when a component asks for it, i.e. whenever one starts: `sluice up`, a restart by the
watchdog. The CA itself is never replaced; delete the folder to start a new CA (restart
everything).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

XDS_SERVER = "sluice-traffic"  # the traffic controller's ADS port
ALS_SERVER = "sluice-metrics"  # the metrics service's access-log port
PROBE_CLIENT = "sluice-probe"  # the supervisor's health checks
CA_CERT, CA_KEY = "ca.crt", "ca.key"
LEAF_VALIDITY = timedelta(days=825)
CA_VALIDITY = timedelta(days=3650)
# A leaf is renewed when it has less than this left: a platform started at least once a
# quarter never runs on an expired certificate.
RENEW_BEFORE = timedelta(days=90)


def expires_soon(cert: Path, now: datetime | None = None) -> bool:
    """Whether the certificate in `cert` has less than RENEW_BEFORE left (or cannot be read)."""
    try:
        leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return True
    return leaf.not_valid_after_utc - (now or datetime.now(UTC)) < RENEW_BEFORE


@dataclass(frozen=True)
class Identity:
    """A certificate, its key and the CA that verifies the other side (PEM files)."""

    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(certificate chain, private key, CA certificate) as bytes, for grpc credentials."""
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write `path` whole or not at all (a reader never sees half a key)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM (the files are 0600 instead)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def new_ca(
    common_name: str, validity: timedelta = CA_VALIDITY
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed P-256 CA that may sign leaves only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC) - timedelta(minutes=5)  # clocks a little behind still accept it
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


class PlatformPki:
    """The CA in `folder` and the identities it issued."""

    def __init__(self, folder: Path):
        self.folder = folder.absolute()

    @property
    def ca_cert(self) -> Path:
        return self.folder / CA_CERT

    def server(self, dns_name: str) -> Identity:
        """The identity of a server that clients know as `dns_name`."""
        return self._identity(dns_name, server=True)

    def client(self, name: str) -> Identity:
        """The identity of a client whose certificate's common name is `name`."""
        return self._identity(name, server=False)

    def _identity(self, name: str, *, server: bool) -> Identity:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"not a certificate name: {name!r}")
        kind = "server" if server else "client"
        cert, key = self.folder / f"{kind}-{name}.crt", self.folder / f"{kind}-{name}.key"

        def wanted() -> bool:
            return not key.exists() or expires_soon(cert)

        if wanted():
            with self._locked():
                if wanted():  # another process may have issued it meanwhile
                    self._issue(name, server=server, cert=cert, key=key)
        return Identity(cert=cert, key=key, ca=self.ca_cert)

    def issue(self, name: str, *, server: bool, validity: timedelta = LEAF_VALIDITY) -> Identity:
        """Issue `name`'s identity again now, valid for `validity` (tests make short ones)."""
        kind = "server" if server else "client"
        cert, key = self.folder / f"{kind}-{name}.crt", self.folder / f"{kind}-{name}.key"
        with self._locked():
            self._issue(name, server=server, cert=cert, key=key, validity=validity)
        return Identity(cert=cert, key=key, ca=self.ca_cert)

    def _locked(self) -> _Lock:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return _Lock(self.folder / ".lock")

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The CA (created on first use); the caller holds the lock."""
        if self.ca_cert.exists() and (self.folder / CA_KEY).exists():
            key = serialization.load_pem_private_key((self.folder / CA_KEY).read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return x509.load_pem_x509_certificate(self.ca_cert.read_bytes()), key
        cert, key = new_ca("Sluice platform CA")
        _write(self.folder / CA_KEY, pem_private_key(key), 0o600)
        _write(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o600)
        return cert, key

    def _issue(
        self, name: str, *, server: bool, cert: Path, key: Path, validity: timedelta = LEAF_VALIDITY
    ) -> None:
        ca_cert, ca_key = self._ca()
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC) - timedelta(minutes=5)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + validity)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(key, pem_private_key(leaf_key), 0o600)
        _write(cert, leaf.public_bytes(serialization.Encoding.PEM), 0o600)


class _Lock:
    """An exclusive flock on a file, held for a `with` block (across processes)."""

    def __init__(self, path: Path):
        self._path = path
        self._fd = -1

    def __enter__(self) -> None:
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def main(argv: list[str] | None = None) -> None:
    """`python -m sluice.common.pki FOLDER [GATEWAY_NODE]`: a CA and every identity the
    platform's containers need (compose's one-shot `pki` service, Kubernetes' Secret)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m sluice.common.pki FOLDER [GATEWAY_NODE]")
    pki = PlatformPki(Path(args[0]))
    made = [
        pki.server(XDS_SERVER),
        pki.server(ALS_SERVER),
        pki.client(args[1] if len(args) > 1 else "sluice-gateway"),
    ]
    for identity in made:
        print(identity.cert, identity.key)


if __name__ == "__main__":
    main()
