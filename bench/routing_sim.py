"""Routing policies on a synthetic multi-turn chat trace: prefix-cache hit rate, load
balance and queueing, against an oracle that sees every backend's cache.

    python bench/routing_sim.py [--backends 8,64,1000] [--requests-per-backend 1500,500,250]

Trace: system prompts shared by many users (Zipf popularity); conversations start as a
Poisson process; turn t's prompt is the system prompt + every earlier turn (user message
and answer) + a new user message, so later turns extend earlier ones. Turn t+1 arrives
a think time after turn t's answer would have streamed.

Backends: `slots` requests run at once (a batch), the rest wait in FIFO order; a request
holds its slot for uncached prompt tokens x prefill cost + output tokens x decode cost.
Each backend keeps an LRU prefix cache of `cache-blocks` KV blocks: a request's hit is
its leading blocks found there (chained, so it stops at the first miss); its blocks are
inserted once its prefill runs. The arrival rate puts the cluster at `util` load for a
request mix whose reusable prefix (system prompt or the previous turn) is half cached;
the `util` column is what each policy's hit rate made of it.

Policies are the ones in policies/routing.py, fed the way plugins/routing.py feeds them:
the backends, a RoutingKey (the prompt's prefix hashes at prefix_hash_chain's boundaries,
`key-blocks` one per block, then the sparser tail) with the conversation id, and
`on_routed` after each pick. The oracle picks, among backends within the same load
bound, the one holding the longest cached prefix (ties: least loaded).

Columns, over requests arriving after the warm-up: hit = prompt tokens found cached /
prompt tokens; max/mean = the busiest backend's busy time over the mean (random
placement alone gives ~1.2 at 1,000 backends: each serves only ~150 requests in the
window); wait = queueing before a slot frees; choose = routing time per request (key,
choose, on_routed), as measured beside the other simulations running in parallel.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import multiprocessing
import platform
import statistics
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.routing_trace import Trace, Workload, block_ids, make_trace, prefix_key
from policies.routing import (
    BackendState,
    ConversationAffinity,
    LeastOutstanding,
    Policy,
    PrefixAffinity,
    RoundRobin,
    RoutingKey,
    load_bound,
)

POLICIES = ["round_robin", "least_outstanding", "prefix_affinity", "conversation_affinity"]


class Cache:
    """One backend's LRU prefix cache; `holders` (block -> backends holding it) is kept
    only for the oracle."""

    def __init__(self, me: int, capacity: int, holders: dict[int, set[int]] | None) -> None:
        self.me, self.capacity, self.holders = me, capacity, holders
        self.lru: OrderedDict[int, None] = OrderedDict()

    def serve(self, blocks: list[int]) -> int:
        """Leading blocks found; then all are inserted or touched, last block first (as
        vLLM frees a finished sequence's blocks): a prefix is always more recent than its
        extensions, so it is evicted after them and a cached block implies its prefix."""
        lru, holders = self.lru, self.holders
        hit = 0
        for b in blocks:
            if b not in lru:
                break
            hit += 1
        for b in reversed(blocks):
            if b in lru:
                lru.move_to_end(b)
                continue
            lru[b] = None
            if holders is not None:
                holders.setdefault(b, set()).add(self.me)
        while len(lru) > self.capacity:
            old, _ = lru.popitem(last=False)
            if holders is not None:
                held = holders[old]
                held.discard(self.me)
                if not held:
                    del holders[old]
        return hit


class Oracle:
    """Longest cached prefix among the backends within the load bound, ties to the least
    loaded (rotating). Sees the caches; a yardstick, not a deployable policy. A cached
    block implies its prefix (see Cache.serve), so the deepest block of the prompt that a
    backend within the bound holds marks the longest prefix."""

    def __init__(self, holders: dict[int, set[int]], load_factor: float) -> None:
        self.holders, self.load_factor, self.turn = holders, load_factor, 0

    def pick(self, backends: list[BackendState], blocks: list[int], total: int) -> int:
        n = len(backends)
        bound = load_bound(total, n, self.load_factor)
        self.turn += 1
        turn = self.turn

        def load(i: int) -> tuple[int, int]:
            return backends[i].outstanding, (i - turn) % n

        for b in reversed(blocks):
            held = self.holders.get(b)
            if held:
                fits = [i for i in held if backends[i].outstanding < bound]
                if fits:
                    return min(fits, key=load)
        return min(range(n), key=load)  # nothing of it cached within the bound


def make_policy(name: str, load_factor: float) -> Policy:
    if name == "round_robin":
        return RoundRobin()
    if name == "least_outstanding":
        return LeastOutstanding()
    if name == "prefix_affinity":
        return PrefixAffinity(load_factor)
    if name == "conversation_affinity":
        return ConversationAffinity(load_factor)
    raise ValueError(name)


def simulate(tr: Trace, n: int, name: str, w: Workload, load_factor: float) -> dict[str, Any]:
    backends = [BackendState(id=f"backend-{i}") for i in range(n)]
    index = {id(b): i for i, b in enumerate(backends)}
    holders: dict[int, set[int]] | None = {} if name == "oracle" else None
    caches = [Cache(i, w.cache_blocks, holders) for i in range(n)]
    pick: Callable[[int], int]
    if holders is not None:
        oracle = Oracle(holders, load_factor)

        def pick(r: int) -> int:
            return oracle.pick(backends, list(block_ids(tr, r)), total)
    else:
        policy = make_policy(name, load_factor)

        def pick(r: int) -> int:
            key = RoutingKey(prefix_key(tr, r, w.key_blocks), f"conv-{tr.conv[r]}")
            chosen = policy.choose(backends, key)
            policy.on_routed(chosen, key)
            return index[id(chosen)]

    total = 0  # requests in flight, all backends
    free = [w.slots] * n
    waiting: list[deque[int]] = [deque() for _ in range(n)]
    running: list[tuple[float, int, int]] = []  # (finish time, request, backend)
    busy = [0.0] * n
    hits = [0] * len(tr.arrival)
    waits: list[float] = []
    choose_s = 0.0

    def start(r: int, i: int, now: float) -> None:
        hit = hits[r] = caches[i].serve(list(block_ids(tr, r))) * w.block_tokens
        service = (tr.prompt[r] - hit) * w.prefill_s_per_token
        service += tr.output[r] * w.decode_s_per_token
        heapq.heappush(running, (now + service, r, i))
        if tr.measured[r]:
            busy[i] += service
            waits.append(now - tr.arrival[r])

    def finish_until(t: float) -> None:
        nonlocal total
        while running and running[0][0] <= t:
            done, _, i = heapq.heappop(running)
            backends[i].outstanding -= 1
            total -= 1
            if waiting[i]:
                start(waiting[i].popleft(), i, done)
            else:
                free[i] += 1

    for r, t in enumerate(tr.arrival):
        finish_until(t)
        t0 = time.perf_counter()
        i = pick(r)
        choose_s += time.perf_counter() - t0
        backends[i].outstanding += 1
        total += 1
        if free[i]:
            free[i] -= 1
            start(r, i, t)
        else:
            waiting[i].append(r)
    finish_until(math.inf)

    return summary(tr, name, w, Outcome(hits, busy, waits, choose_s))


@dataclass(slots=True)
class Outcome:
    """What one simulation recorded: per request its cached tokens, per backend its busy
    seconds (measured requests only), the measured queueing waits, the routing time."""

    hits: list[int]
    busy: list[float]
    waits: list[float]
    choose_s: float


def summary(tr: Trace, name: str, w: Workload, out: Outcome) -> dict[str, Any]:
    hits, busy, waits = out.hits, out.busy, sorted(out.waits)
    n = len(busy)

    def hit_rate(where: Callable[[int], bool]) -> float:
        rs = [r for r in range(len(hits)) if tr.measured[r] and where(r)]
        return sum(hits[r] for r in rs) / max(1, sum(tr.prompt[r] for r in rs))

    measured_span = tr.span - w.warmup_s
    return {
        "backends": n,
        "requests": len(tr.arrival),
        "policy": name,
        "hit_rate": hit_rate(lambda r: True),
        "hit_rate_first_turns": hit_rate(lambda r: tr.turn[r] == 0),
        "hit_rate_later_turns": hit_rate(lambda r: tr.turn[r] > 0),
        # system prompts past the key's per-block part: its tail tells conversations apart
        "hit_rate_long_system_prompt": hit_rate(lambda r: tr.sys_blocks[r] >= w.key_blocks),
        "load_max_over_mean": max(busy) / statistics.fmean(busy),
        "utilisation": sum(busy) / (n * w.slots * measured_span),
        "wait_p50_ms": 1000 * waits[len(waits) // 2],
        "wait_p99_ms": 1000 * waits[int(len(waits) * 0.99)],
        "choose_us": 1e6 * out.choose_s / len(tr.arrival),
        "measured_requests": len(waits),
    }


_TRACES: dict[int, Trace] = {}  # built before the workers fork, shared copy-on-write


def _job(job: tuple[int, str, Workload, float]) -> dict[str, Any]:
    n, name, w, load_factor = job
    return simulate(_TRACES[n], n, name, w, load_factor)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="8,64,1000")
    ap.add_argument("--requests-per-backend", default="1500,500,250", help="one, or one per size")
    ap.add_argument("--policies", default=",".join([*POLICIES, "oracle"]))
    ap.add_argument("--load-factor", type=float, default=1.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="simulations run in parallel")
    defaults = Workload()
    for field in Workload.__dataclass_fields__:
        value = getattr(defaults, field)
        ap.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    ap.add_argument("--out", type=Path, default=Path("bench/results/routing_sim.json"))
    args = ap.parse_args()
    w = Workload(**{f: getattr(args, f) for f in Workload.__dataclass_fields__})
    sizes = [int(x) for x in args.backends.split(",")]
    per = [int(x) for x in args.requests_per_backend.split(",")]
    per = per * len(sizes) if len(per) == 1 else per
    names = args.policies.split(",")

    started = time.perf_counter()
    for n, rpb in zip(sizes, per, strict=True):
        _TRACES[n] = make_trace(n, n * rpb, w, args.seed)
    jobs = [(n, name, w, args.load_factor) for n in sizes for name in names]
    # the biggest first, so no worker is left with a long one at the end
    order = sorted(range(len(jobs)), key=lambda j: -jobs[j][0] * len(_TRACES[jobs[j][0]].arrival))
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        done = pool.map(_job, [jobs[j] for j in order], chunksize=1)
    results: list[dict[str, Any]] = [{}] * len(jobs)
    for j, result in zip(order, done, strict=True):
        results[j] = result

    print(
        f"{'backends':>8} {'requests':>8} {'policy':<22} {'hit':>6} {'/oracle':>7} "
        f"{'max/mean':>8} {'util':>5} {'wait p50':>9} {'wait p99':>9} {'choose':>8}"
    )
    oracle = {x["backends"]: x["hit_rate"] for x in results if x["policy"] == "oracle"}
    for x in results:
        x["vs_oracle"] = x["hit_rate"] / oracle.get(x["backends"], math.nan)
        print(
            f"{x['backends']:>8} {x['requests']:>8} {x['policy']:<22} {x['hit_rate']:>6.1%} "
            f"{x['vs_oracle']:>7.1%} {x['load_max_over_mean']:>8.2f} {x['utilisation']:>5.0%} "
            f"{x['wait_p50_ms']:>7.0f}ms {x['wait_p99_ms']:>7.0f}ms {x['choose_us']:>6.0f}us"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": platform.python_version(),
        "seed": args.seed,
        "argv": sys.argv[1:],
        "seconds": round(time.perf_counter() - started, 1),
    }
    payload = {"workload": asdict(w), "load_factor": args.load_factor, "meta": meta}
    args.out.write_text(json.dumps({**payload, "results": results}, indent=2))
    print(f"wrote {args.out} ({meta['seconds']} s)")


if __name__ == "__main__":
    main()
