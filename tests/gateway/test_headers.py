"""Header allow-lists and the request id."""

from __future__ import annotations

from gateway.headers import HeaderRules, request_id


def test_exact_names_and_families() -> None:
    rules = HeaderRules(["Retry-After", "x-ratelimit-*"])
    assert rules.allows("retry-after") and rules.allows("x-ratelimit-remaining-tokens")
    assert not rules.allows("x-ratelimit") and not rules.allows("set-cookie")
    picked = rules.pick_raw(
        [(b"Retry-After", b"2"), (b"Set-Cookie", b"s"), (b"X-RateLimit-Limit-Requests", b"9")]
    )
    assert picked == {"retry-after": "2", "x-ratelimit-limit-requests": "9"}


def test_request_ids() -> None:
    assert request_id("abc-123") == "abc-123"
    made = request_id(None)
    assert made.startswith("req_") and made != request_id(None)
    assert request_id("bad id with spaces").startswith("req_")
    assert request_id("x" * 201).startswith("req_")
