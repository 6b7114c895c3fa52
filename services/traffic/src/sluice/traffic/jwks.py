"""The registry's token keys (JWKS), which Envoy's jwt_authn needs inline.

The registry stores its JWKS in MongoDB (collection `jwks`, written by the
registry only); the controller reads it there at start and again on endpoint
and key events. Until it is known, the gateway carries `PLACEHOLDER_JWKS`, a
public key whose private half was thrown away: every token fails (401),
nothing is let through, and the listener stays valid.
"""

from __future__ import annotations

import json

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from sluice.common.log import get_logger
from sluice.common.mongo import Document
from sluice.common.resources import JWKS, JWKS_ID

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


class StoredJwks:
    """Reads the JWKS the registry published; remembers the last one it got."""

    def __init__(self, db: AsyncDatabase[Document]):
        self._c = db[JWKS]
        self.current: str | None = None

    async def refresh(self) -> str | None:
        """The stored JWKS now, or the last known one (None before the registry stored one)."""
        try:
            raw = await self._c.find_one({"_id": JWKS_ID})
        except PyMongoError as exc:
            log.warning("jwks_unavailable", error=str(exc))
            return self.current
        if raw is None:
            return self.current
        fetched = str(raw["jwks"])
        if fetched != self.current:
            log.info("jwks_updated", keys=len(json.loads(fetched).get("keys", [])))
            self.current = fetched
        return self.current
