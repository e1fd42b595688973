from __future__ import annotations

import pytest

from gateway.auth import DEFAULT_TENANT, Authenticator
from gateway.errors import Unauthorized


def test_no_keys_means_auth_off() -> None:
    assert Authenticator({}).tenant(None) == DEFAULT_TENANT


def test_keys_map_to_tenants() -> None:
    auth = Authenticator({"sk-a": "team-a", "sk-b": "team-b"})
    assert auth.tenant("Bearer sk-a") == "team-a"
    assert auth.tenant("bearer  sk-b ") == "team-b"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic sk-a", "Bearer sk-wrong", "sk-a"])
def test_missing_malformed_or_unknown_keys_are_401(header: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        Authenticator({"sk-a": "team-a"}).tenant(header)
    assert info.value.status_code == 401
    assert info.value.error_type == "authentication_error"
