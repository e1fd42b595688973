"""API keys -> tenants. With no keys configured auth is off and every call belongs to
the tenant "default"; with keys, a missing or unknown `Authorization: Bearer` key is a
401 in OpenAI's shape (the SDK raises AuthenticationError)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.errors import Unauthorized

DEFAULT_TENANT = "default"


class Authenticator:
    def __init__(self, keys: Mapping[str, str]) -> None:
        self._keys = dict(keys)  # key -> tenant

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def tenant(self, authorization: str | None) -> str:
        if not self._keys:
            return DEFAULT_TENANT
        if not authorization:
            raise Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            )
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("Malformed Authorization header: expected 'Bearer YOUR_KEY'.")
        tenant = self._keys.get(key)  # a hash lookup: no prefix-by-prefix timing signal
        if tenant is None:
            raise Unauthorized("Incorrect API key provided.")
        return tenant
