"""Prefix routing across two real engine backends, against round robin in the same run.

Each system prompt opens a handful of questions, sent through both gateway replicas in
turn. With prefix affinity every request of one system prompt lands on one backend, so
only its first request computes the prompt and the others read it from that backend's
prefix cache; round robin splits each group over both backends, and each computes the
system prompt once. The backends' own counters (`vllm:prefix_cache_hits_total` /
`vllm:prefix_cache_queries_total`, `vllm:request_success_total` on their /metrics) say
where each request ran and how much of its prompt was found cached."""

from __future__ import annotations

import uuid

import httpx
import pytest

from gateway.testing.stack import MODEL, Stack, scrape
from tests.stack.conftest import ROUND_ROBIN

pytestmark = pytest.mark.slow

QUESTIONS = 6
# Openings that differ in their first characters: the groups' prefix keys differ from
# the first block on, so they spread over the hash ring rather than sharing one place.
OPENINGS = ("Harbour office", "Mountain rescue", "City library", "Rail depot")
DUTIES = (
    "Answer briefly and politely. Never invent schedules, fees or names. When a question "
    "is outside your remit, say so and point to the front desk. Keep answers under fifty "
    "words. Use the metric system. Dates are day, month, year. Refuse to discuss other "
    "customers. Always mention the opening hours when asked about visits: nine to five, "
    "Monday to Saturday, closed on public holidays. Staff names are never given out."
)


class Counters:
    """What the backends counted since the last `take()`."""

    def __init__(self, stack: Stack) -> None:
        self.urls = stack.backend_urls
        self.last = [scrape(u) for u in self.urls]

    def take(self) -> list[dict[str, float]]:
        now = [scrape(u) for u in self.urls]
        delta = [{k: v - before.get(k, 0.0) for k, v in n.items()} for n, before in
                 zip(now, self.last, strict=True)]  # fmt: skip
        self.last = now
        return delta


def _ask(url: str, model: str, system: str, question: str) -> None:
    body = {"model": model, "temperature": 0, "max_tokens": 2, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": question}]}  # fmt: skip
    reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=120,
                       headers={"cache-control": "no-cache"})  # fmt: skip
    assert reply.status_code == 200, reply.text


def _run(stack: Stack, model: str) -> tuple[list[list[int]], float]:
    """Sends every group through `model`; returns each group's requests per backend and
    the backends' prefix-cache hit rate over the run (hits / prompt tokens looked up)."""
    counters = Counters(stack)
    run = uuid.uuid4().hex[:8]  # prompts no earlier run has left in the caches
    placements, hits, queries = [], 0.0, 0.0
    for opening in OPENINGS:
        system = f"{opening} {run}: you are its assistant. {DUTIES}"
        for q in range(QUESTIONS):
            gateway = stack.gateway_urls[q % len(stack.gateway_urls)]
            _ask(gateway, model, system, f"Question {q}: what should I bring?")
        delta = counters.take()
        placements.append([round(d.get("vllm:request_success_total", 0)) for d in delta])
        hits += sum(d.get("vllm:prefix_cache_hits_total", 0) for d in delta)
        queries += sum(d.get("vllm:prefix_cache_queries_total", 0) for d in delta)
    return placements, hits / queries


def test_prefix_routing_keeps_a_system_prompt_on_one_backend_and_beats_round_robin(
    stack: Stack,
) -> None:
    affinity, affinity_rate = _run(stack, MODEL)
    spread, spread_rate = _run(stack, ROUND_ROBIN)
    print(
        f"\nprefix-cache hit rate over {len(OPENINGS)} system prompts x {QUESTIONS} questions:"
        f" prefix affinity {affinity_rate:.1%} (requests per backend {affinity}),"
        f" round robin {spread_rate:.1%} ({spread})"
    )
    for group in affinity:
        assert sorted(group) == [0, QUESTIONS]  # one backend took the whole group
    assert all(min(group) > 0 for group in spread)  # round robin split each one
    assert affinity_rate > spread_rate
