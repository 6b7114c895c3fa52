"""Encryption at rest for endpoint keys: a database dump alone does not hand them out.

Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`) with the platform's
secret key (`SLUICE_SECRET_KEY`; `sluice up` generates one into the state
directory). The registry encrypts, the traffic controller decrypts to
configure the gateway.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken


class SecretBoxError(RuntimeError):
    pass


class SecretBox:
    def __init__(self, key: str):
        self._key = key
        try:
            self._fernet = Fernet(key.encode())
        except (ValueError, TypeError) as exc:
            raise SecretBoxError(
                "SLUICE_SECRET_KEY must be 32 bytes in urlsafe base64 "
                "(generate one with `python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`)"
            ) from exc

    def encrypt(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise SecretBoxError(
                "stored secret cannot be decrypted: SLUICE_SECRET_KEY differs from the key "
                "it was written with"
            ) from exc

    def derive(self, purpose: str) -> str:
        """A secret for `purpose` derived from the platform's key (HMAC-SHA256, hex)."""
        return hmac.new(self._key.encode(), purpose.encode(), hashlib.sha256).hexdigest()
