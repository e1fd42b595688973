"""Cache keys, admission and Cache-Control (policies/cache.py)."""

from __future__ import annotations

import pytest

from policies.cache import (
    CacheControl,
    entry_ttl,
    exact_key,
    is_fresh,
    is_reproducible,
    parse_cache_control,
    semantic_split,
)

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def test_the_key_covers_tenant_endpoint_scope_and_request() -> None:
    key = exact_key("chat.completions", "a", None, BASE)
    assert key == exact_key("chat.completions", "a", None, dict(BASE))
    assert key != exact_key("chat.completions", "b", None, BASE)
    assert key != exact_key("completions", "a", None, BASE)
    assert key != exact_key("chat.completions", "a", "conv-1", BASE)
    assert key != exact_key("chat.completions", "a", None, {**BASE, "max_tokens": 5})


def test_delivery_fields_and_nulls_do_not_change_the_key() -> None:
    key = exact_key("chat.completions", "a", None, BASE)
    same = {**BASE, "stream": True, "stream_options": {"include_usage": True}, "user": "u"}
    assert exact_key("chat.completions", "a", None, same) == key
    assert exact_key("chat.completions", "a", None, {**BASE, "seed": None}) == key
    parts = [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]
    with_parts = {**BASE, "messages": [{"role": "user", "content": parts}]}
    assert exact_key("chat.completions", "a", None, with_parts) == key


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, CacheControl()),
        ("no-store", CacheControl(no_store=True)),
        ("No-Cache", CacheControl(no_cache=True)),
        ("max-age=60", CacheControl(max_age=60)),
        ('max-age="5", no-cache', CacheControl(no_cache=True, max_age=5)),
        ("max-age=banana, private", CacheControl()),
    ],
)
def test_cache_control(header: str | None, expected: CacheControl) -> None:
    assert parse_cache_control(header) == expected


def test_read_write_ttl_and_freshness() -> None:
    assert not CacheControl(no_store=True).may_write and not CacheControl(no_store=True).may_read
    assert CacheControl(no_cache=True).may_write and not CacheControl(no_cache=True).may_read
    assert not CacheControl(max_age=0).may_read
    assert entry_ttl(3600, 86400, CacheControl()) == 3600
    assert entry_ttl(3600, 86400, CacheControl(max_age=60)) == 60
    assert entry_ttl(3600, 100, CacheControl(max_age=500)) == 100  # capped
    assert entry_ttl(3600, 86400, CacheControl(max_age=0)) == 3600
    assert is_fresh(10, CacheControl(max_age=60)) and not is_fresh(61, CacheControl(max_age=60))


def test_reproducible_means_greedy_or_seeded() -> None:
    assert is_reproducible({"temperature": 0})
    assert is_reproducible({"temperature": 0.9, "seed": 3})
    assert not is_reproducible({"temperature": 0.9})
    assert not is_reproducible({})  # the server's default temperature is 1


def test_the_semantic_split_keeps_everything_but_the_newest_user_text() -> None:
    convo = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "what is a cache?"},
    ]
    split = semantic_split("chat.completions", "a", None, {**BASE, "messages": convo})
    assert split is not None and split.query == "what is a cache?"
    reworded = [*convo[:-1], {"role": "user", "content": "explain caches"}]
    other = semantic_split("chat.completions", "a", None, {**BASE, "messages": reworded})
    assert other is not None and other.context_key == split.context_key
    for changed in (
        [{"role": "system", "content": "be verbose"}, *convo[1:]],
        [*convo[:2], {"role": "assistant", "content": "hey"}, convo[3]],
    ):
        s = semantic_split("chat.completions", "a", None, {**BASE, "messages": changed})
        assert s is not None and s.context_key != split.context_key
    t = semantic_split("chat.completions", "b", None, {**BASE, "messages": convo})
    assert t is not None and t.context_key != split.context_key
    hot = semantic_split("chat.completions", "a", None, {**BASE, "messages": convo, "seed": 1})
    assert hot is not None and hot.context_key != split.context_key


def test_no_semantic_split_without_a_user_text_turn_last() -> None:
    tool_last = [{"role": "tool", "tool_call_id": "t", "content": "42"}]
    assert semantic_split("chat.completions", "a", None, {**BASE, "messages": tool_last}) is None
    assert semantic_split("completions", "a", None, {"model": "m", "prompt": "hi"}) is None
