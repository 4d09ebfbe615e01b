"""API keys: ``Authorization: Bearer KEY`` checked against SHA-256 digests from the settings.

Plain keys never live in files or logs; the key's public id labels metrics and logs.
"""

from __future__ import annotations

import hashlib
import secrets

from inferstack.gateway.errors import APIError
from inferstack.gateway.settings import ApiKey

ANONYMOUS = "anonymous"


def hash_key(key: str) -> str:
    """The digest to put in ``api_keys[].sha256`` for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key (``sk-`` + 43 URL-safe characters, 256 bits)."""
    return "sk-" + secrets.token_urlsafe(32)


class KeyStore:
    """Maps a presented key to its id."""

    def __init__(self, keys: list[ApiKey], enabled: bool) -> None:
        self.enabled = enabled
        self._by_digest = {k.sha256: k.id for k in keys}

    def authenticate(self, authorization: str | None) -> str:
        """Return the key id, or raise a 401 in OpenAI's shape."""
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            raise _unauthorized("Missing API key: send 'Authorization: Bearer YOUR_KEY'.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("Malformed Authorization header: expected 'Bearer YOUR_KEY'.")
        key_id = self._by_digest.get(hash_key(token))
        if key_id is None:
            raise _unauthorized("Incorrect API key provided.")
        return key_id


def _unauthorized(message: str) -> APIError:
    return APIError(
        401,
        message,
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="inferstack"'},
    )
