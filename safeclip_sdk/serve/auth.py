"""Optional API keys: a bearer token compared in constant time with every accepted key.

The keys come from the environment (``SAFECLIP_API_KEYS``, comma-separated), never from the
command line; no message, log line or response ever contains a key or the token a client sent.
"""

from __future__ import annotations

import hmac
import os

from fastapi import Request

from .errors import ApiError
from .settings import API_KEYS_ENV


def api_keys_from_environment() -> tuple[str, ...]:
    """The keys in ``SAFECLIP_API_KEYS`` (blank entries dropped); empty: no key is asked for."""
    return tuple(key.strip() for key in os.environ.get(API_KEYS_ENV, "").split(",") if key.strip())


class BearerKeyCheck:
    """A FastAPI dependency: 401 unless ``Authorization: Bearer <key>`` names an accepted key."""

    def __init__(self, keys: tuple[str, ...]):
        self._keys = tuple(key.encode() for key in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    async def __call__(self, request: Request) -> None:
        if not self._keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        matched = False
        for key in self._keys:  # every key is compared, so the time does not say which one matched
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise ApiError(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                           "authentication_error", headers={"WWW-Authenticate": "Bearer"})
