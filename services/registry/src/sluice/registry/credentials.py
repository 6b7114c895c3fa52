"""Endpoint credentials: random keys and short-lived signed tokens.

Keys are 32 random bytes (urlsafe base64), encrypted at rest with the
platform's secret key. Tokens are ES256 JWTs; the public half of the signing
key is published as a JWKS so the gateway (Envoy's jwt_authn) can verify them
without calling back.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from sluice.common.resources import TOKEN_ISSUER, token_audience

TOKEN_LIFETIME = timedelta(hours=1)
KEY_BYTES = 32


def new_key() -> str:
    return secrets.token_urlsafe(KEY_BYTES)


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: datetime
    refresh_after: datetime


class TokenIssuer:
    """Signs endpoint tokens with one EC P-256 key and publishes its JWKS."""

    def __init__(self, private_key_pem: str):
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the token signing key must be an EC private key")
        self._key = key
        public_jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
        self.kid = public_jwk["x"][:16]
        self.jwks = json.dumps(
            {"keys": [{**public_jwk, "kid": self.kid, "alg": "ES256", "use": "sig"}]},
            sort_keys=True,
        )

    @staticmethod
    def generate_private_key_pem() -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def issue(self, endpoint_name: str, *, subject: str, now: datetime | None = None) -> Token:
        issued = now or datetime.now(UTC)
        expires = issued + TOKEN_LIFETIME
        claims = {
            "iss": TOKEN_ISSUER,
            "aud": token_audience(endpoint_name),
            "sub": subject,
            "iat": int(issued.timestamp()),
            "nbf": int(issued.timestamp()),
            "exp": int(expires.timestamp()),
        }
        value = jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid})
        return Token(value=value, expires_at=expires, refresh_after=issued + TOKEN_LIFETIME / 2)
