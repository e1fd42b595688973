"""Two gateway replicas over one real Redis and two real engine backends (`make stack`'s
topology, gateway/testing/stack.py): an exact-cache entry written through one replica
is a hit on the other, and a conversation continued on the other replica keeps its
history (the backend is sent the earlier turns: more prompt tokens)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from gateway.testing.stack import MODEL, Stack

pytestmark = pytest.mark.slow


def _chat(url: str, content: str, **headers: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "temperature": 0, "max_tokens": 8}  # fmt: skip
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=120)


def _usage(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    usage: dict[str, Any] = reply.json()["usage"]
    return usage


def test_an_answer_cached_through_one_replica_is_a_hit_on_the_other(stack: Stack) -> None:
    one, two = stack.gateway_urls
    question = f"Name a colour of the sky ({uuid.uuid4().hex[:8]})."
    first = _chat(one, question)
    assert first.headers["x-cache"] == "miss"
    second = _chat(two, question)
    assert second.headers["x-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]


def test_a_conversation_moves_between_replicas_with_its_history(stack: Stack) -> None:
    one, two = stack.gateway_urls
    conversation = {"x-conversation-id": f"stack-{uuid.uuid4().hex}", "cache-control": "no-cache"}
    opening = _usage(_chat(one, "My name is Ada and I keep bees.", **conversation))
    alone = _usage(_chat(two, "What is my name?", **{"cache-control": "no-cache"}))
    continued = _usage(_chat(two, "What is my name?", **conversation))
    # The second replica read the first turn from Redis and sent it along: the backend saw
    # the earlier question and answer before this one.
    assert continued["prompt_tokens"] > alone["prompt_tokens"] + opening["prompt_tokens"] // 2
