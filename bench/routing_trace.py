"""The synthetic multi-turn chat trace bench/routing_sim.py routes: shared system prompts
(Zipf popularity), conversations arriving as a Poisson process, each turn's prompt the
previous turn's plus its answer and a new user message. Blocks are named by chained ids,
so two requests share a block id exactly when they share the prefix up to it."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterator
from dataclasses import dataclass

from policies.routing import prefix_boundaries

_SPAN = 1 << 24  # block ids: owner (system prompt or conversation) * _SPAN + block index


@dataclass(slots=True)
class Workload:
    system_prompts: int = 40
    zipf_s: float = 1.1
    system_tokens_median: float = 700.0
    user_tokens_median: float = 60.0
    output_tokens_median: float = 200.0
    turns_mean: float = 4.0
    think_s: float = 5.0
    block_tokens: int = 16
    key_blocks: int = 64
    prefill_s_per_token: float = 0.0005  # a slot is 1/8 of a GPU prefilling ~16k tokens/s
    decode_s_per_token: float = 0.003  # ... and decoding ~2.7k tokens/s in all
    slots: int = 8
    cache_blocks: int = 2048  # 32k tokens: the free KV room beside the running batch
    util: float = 0.7
    warmup_s: float = 20.0  # left out of the stats: caches fill meanwhile


@dataclass(slots=True)
class Trace:
    arrival: list[float]
    owner_sys: list[int]  # block-id base of the system prompt
    owner_conv: list[int]  # block-id base of the conversation
    sys_blocks: list[int]
    blocks: list[int]  # full blocks of the prompt
    prompt: list[int]
    output: list[int]
    conv: list[int]
    turn: list[int]
    measured: list[bool]
    rate: float  # requests/s
    span: float  # arrivals lie in [0, span]


def make_trace(n_backends: int, requests: int, w: Workload, seed: int) -> Trace:
    """About `requests` requests arriving over [0, span]. Conversations start from well
    before 0, so the arrival mix (first turns vs later ones) is steady from the start;
    turns before 0 are dropped (their context is in no cache: a cold start)."""
    rng = random.Random(seed)
    lognormal = rng.lognormvariate
    B = w.block_tokens
    sys_len = [
        min(4000, max(64, int(lognormal(math.log(w.system_tokens_median), 0.7))))
        for _ in range(w.system_prompts)
    ]
    popularity = [1.0 / (i + 1) ** w.zipf_s for i in range(w.system_prompts)]

    def conversation() -> tuple[int, list[tuple[int, int]]]:
        turns = min(16, 1 + int(rng.expovariate(1.0 / (w.turns_mean - 1))))
        msgs = [
            (
                min(2000, max(4, int(lognormal(math.log(w.user_tokens_median), 0.8)))),
                min(2000, max(8, int(lognormal(math.log(w.output_tokens_median), 0.7)))),
            )
            for _ in range(turns)
        ]
        return rng.choices(range(w.system_prompts), popularity)[0], msgs

    # the rate: mean work of a request whose reusable prefix (the system prompt, or the
    # previous turn's prompt) is half cached, from a sample of conversations
    works: list[float] = []
    for s, msgs in (conversation() for _ in range(4000)):
        length, reusable = sys_len[s], (sys_len[s] // B) * B
        for user, out in msgs:
            length += user
            prefill = (length - reusable / 2) * w.prefill_s_per_token
            works.append(prefill + out * w.decode_s_per_token)
            reusable = (length // B) * B
            length += out
    rate = w.util * n_backends * w.slots / statistics.fmean(works)
    conv_rate = rate * 4000 / len(works)
    span = requests / rate
    lead = 32 * (w.think_s + w.output_tokens_median * w.decode_s_per_token)  # > 16 turns

    rows: list[tuple[float, int, int, int, int, int, int, int]] = []
    start, c = -lead, 0
    while True:
        start += rng.expovariate(conv_rate)
        if start > span:
            break
        s, msgs = conversation()
        t, length = start, sys_len[s]
        for k, (user, out) in enumerate(msgs):
            length += user
            if 0.0 <= t <= span:
                rows.append((t, s, c, sys_len[s] // B, length // B, length, out, k))
            t += out * w.decode_s_per_token + rng.expovariate(1.0 / w.think_s)
            length += out
        c += 1
    rows.sort()
    return Trace(
        arrival=[r[0] for r in rows],
        owner_sys=[r[1] * _SPAN for r in rows],
        owner_conv=[(w.system_prompts + r[2]) * _SPAN for r in rows],
        sys_blocks=[r[3] for r in rows],
        blocks=[r[4] for r in rows],
        prompt=[r[5] for r in rows],
        output=[r[6] for r in rows],
        conv=[r[2] for r in rows],
        turn=[r[7] for r in rows],
        measured=[r[0] >= w.warmup_s for r in rows],
        rate=rate,
        span=span,
    )


def block_ids(tr: Trace, r: int) -> Iterator[int]:
    """The request's full blocks as chained ids: a block past the system prompt belongs
    to the conversation alone (it follows the conversation's own text)."""
    ns = tr.sys_blocks[r]
    yield from range(tr.owner_sys[r], tr.owner_sys[r] + ns)
    yield from range(tr.owner_conv[r] + ns, tr.owner_conv[r] + tr.blocks[r])


def prefix_key(tr: Trace, r: int, max_blocks: int) -> tuple[int, ...]:
    """The ids a RoutingKey carries: prefix_hash_chain's boundaries, each named by its
    last block's id (chained ids: that block names the whole prefix)."""
    ns = tr.sys_blocks[r]
    return tuple(
        tr.owner_sys[r] + b - 1 if b <= ns else tr.owner_conv[r] + b - 1
        for b in prefix_boundaries(tr.blocks[r], max_blocks)
    )
