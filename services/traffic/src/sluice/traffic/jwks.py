"""The registry's token keys (JWKS), which Envoy's jwt_authn needs inline.

Fetched over the registry's gRPC `GetJwks` at start and again on endpoint and
key events. Until it is known, the gateway carries `PLACEHOLDER_JWKS`, a public
key whose private half was thrown away: every token fails (401), nothing is
let through, and the listener stays valid.
"""

from __future__ import annotations

import asyncio
import json

from sluice.common.log import get_logger
from sluice.sdk.client import RegistryClient, SluiceError

log = get_logger(__name__)

PLACEHOLDER_JWKS = json.dumps(
    {
        "keys": [
            {
                "alg": "ES256",
                "crv": "P-256",
                "kid": "sluice-placeholder",
                "kty": "EC",
                "use": "sig",
                "x": "6adtujFRVIQMjuvhzk0Z4i5bdFDC_bZhOIidC9Qlsk8",
                "y": "z0KLvSido4f4QSJwukQ0qSV7bcOgsiWJtBSafIqZfg8",
            }
        ]
    },
    sort_keys=True,
)


class RegistryJwks:
    """Reads the JWKS from the registry; remembers the last one it got."""

    def __init__(self, address: str | None, admin_token: str | None):
        self._address = address
        self._token = admin_token
        self.current: str | None = None

    async def refresh(self) -> str | None:
        """The registry's JWKS now, or the last known one (None before the first success)."""
        if not self._address or not self._token:
            return self.current
        try:
            fetched = await asyncio.to_thread(self._fetch, self._address, self._token)
        except SluiceError as exc:
            log.warning("jwks_unavailable", registry=self._address, error=str(exc))
            return self.current
        if fetched != self.current:
            log.info("jwks_updated", keys=len(json.loads(fetched).get("keys", [])))
            self.current = fetched
        return self.current

    @staticmethod
    def _fetch(address: str, token: str) -> str:
        with RegistryClient(address, token, actor="sluice/traffic") as client:
            return client.jwks()
