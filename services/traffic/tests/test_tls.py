"""The gateway's local certificate renews itself before it expires (sluice.traffic.tls).

It reaches Envoy over SDS and the traffic controller re-reads it at every resync
(GatewaySource), so a renewed file is served without a restart; the local CA stays,
so clients given `ca.crt` keep trusting the gateway.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from sluice.common.pki import expires_soon
from sluice.common.settings import Settings
from sluice.traffic.app import GatewaySource
from sluice.traffic.settings import TrafficSettings
from sluice.traffic.tls import CA_CERT, VALIDITY, ensure_local_certificate


def test_the_local_gateway_certificate_is_renewed_by_the_same_ca(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "tls"
    cert, key = ensure_local_certificate(folder, "sluice.localhost", timedelta(days=1))
    assert expires_soon(cert)
    ca = (folder / CA_CERT).read_bytes()
    old_key = key.read_bytes()
    source = GatewaySource(Settings(state_dir=tmp_path / "state"), TrafficSettings())

    served = source("{}").tls  # the next resync: what SDS sends Envoy

    assert served.private_key != old_key and served.private_key == key.read_bytes()
    leaf = x509.load_pem_x509_certificate(served.certificate_chain)
    assert leaf.not_valid_after_utc > datetime.now(UTC) + VALIDITY - timedelta(days=1)
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    assert (folder / CA_CERT).read_bytes() == ca  # clients' trust is unchanged
    # Not due: the same files again.
    assert source("{}").tls == served
