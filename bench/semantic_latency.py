"""What a semantic-cache hit costs at the client, verified or not, next to an exact hit
and a miss the bundled engine answers.

    python bench/semantic_latency.py [--rounds 3] [--max-tokens 48] [--repeats 20]
        [--threshold 0.8] [--json PATH]

1. End to end: one real `llm-gateway serve` process runs the bundled engine
   (SmolLM2-135M-Instruct, CPU) and serves it as two models whose chains differ only in
   the semantic cache's `verify` setting: `verified` (exact_cache, semantic_cache,
   routing) and `plain` (exact_cache, semantic_cache with verify = false, routing); one
   process, so both meet the same engine and the same machine. One client on a
   keep-alive connection (bench/loadgen.py) sends, per question of PAIRS (20 general
   knowledge and programming questions, each with a paraphrase) and per round:
   - the question to each model: a miss that the engine answers (temperature 0,
     max_tokens 48; reproducible, so both caches keep the answer),
   - then, in a shuffled order: the same request again (an exact-cache hit), and the
     paraphrase to `verified` and to `plain` (semantic hits).
   Every round has a system prompt of its own, so its questions are new to both caches
   (the partition covers the conversation before the newest user turn) and to the
   engine's prefix cache. A warm-up session (the first two pairs) goes unmeasured.
   Each answer's outcome is checked from its headers (`x-cache`, `x-semantic-cache`):
   latency is counted under the kind only when the outcome is the expected one;
   the rest are reported as unexpected (a paraphrase the verifier rejected is answered
   by the engine). Latency is request start to the last byte, p50/p90 per kind.
2. In process, the verification step's own cost: two SemanticCache instances (verify on
   and off) with each pair's question added to a partition of its own, and each
   paraphrase looked up with `await cache.lookup(...)` (FAISS search, verification,
   store read) on precomputed vectors, as bench/cache.py's bench_semantic does; on and
   off alternate, `--repeats` times per pair. The embedding of the new question is not
   part of lookup (timed on its own: embedder.embed of the paraphrase, batch window
   included); the embedding of a substituted word pair (verification) is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cache import pct, start_gateway
from bench.loadgen import Connection, build_request
from bench.overhead import HOST

ENGINE_MODEL = "SmolLM2-135M-Instruct"
KINDS = ("miss", "exact", "verified", "plain")
# (question, paraphrase): each paraphrase passes the verifier (delete/remove by way of the
# word-pair embedding), so it is answered from the question's entry.
PAIRS = [
    ("What is the capital of Australia?", "Which city is the capital of Australia?"),
    ("How do I reverse a list in Python?", "python: what's the way to reverse a list?"),
    ("Who wrote the novel Pride and Prejudice?", "Who is the author of Pride and Prejudice?"),
    ("What causes the seasons on Earth?", "Why does Earth have seasons?"),
    ("How do I delete a branch in git?", "How do I remove a branch in git?"),
    ("What is the boiling point of water at sea level?",
     "At sea level, at what temperature does water boil?"),
    ("Explain what a closure is in JavaScript.", "What is a closure in JavaScript?"),
    ("How does photosynthesis work?", "Can you explain how photosynthesis works?"),
    ("How do I undo the last git commit?", "git: how can I undo my most recent commit?"),
    ("What is the largest planet in the solar system?",
     "Which planet is the biggest in our solar system?"),
    ("What is the difference between a process and a thread?",
     "How do a process and a thread differ?"),
    ("Why is the sky blue?", "What makes the sky look blue?"),
    ("How do I read a CSV file with pandas?", "pandas: how do I read a CSV file?"),
    ("Who painted the Mona Lisa?", "Which artist painted the Mona Lisa?"),
    ("What is a race condition?", "Explain what a race condition is."),
    ("How do vaccines work?", "Can you explain how vaccines work?"),
    ("How do I list all running Docker containers?",
     "What command shows the running Docker containers?"),
    ("What is the speed of light?", "How fast does light travel?"),
    ("What is the time complexity of binary search?",
     "binary search: what is its time complexity?"),
    ("What does HTTP stand for?", "What does the abbreviation HTTP stand for?"),
]  # fmt: skip


def config_text(threshold: float | None, kv_cache_gb: float) -> str:
    text = f'[engine]\nserved_model_name = "{ENGINE_MODEL}"\nkv_cache_gb = {kv_cache_gb}\n'
    text += '[[groups]]\nname = "local"\nkind = "engine"\n'
    extra = f", threshold = {threshold}" if threshold is not None else ""
    for name, verify in (("verified", "true"), ("plain", "false")):
        semantic = f'{{name = "semantic_cache", settings = {{verify = {verify}{extra}}}}}'
        text += f'[[models]]\nname = "{name}"\ngroups = ["local"]\n'
        text += f'upstream_model = "{ENGINE_MODEL}"\n'
        text += f'plugins = ["exact_cache", {semantic}, "routing"]\n'
    return text


class _Tap:
    """A Connection's reader that keeps the head of the last response read."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.inner, self.head = reader, b""

    async def readuntil(self, separator: bytes) -> bytes:
        data = await self.inner.readuntil(separator)
        if separator == b"\r\n\r\n":
            self.head = data
        return data

    async def readexactly(self, n: int) -> bytes:
        return await self.inner.readexactly(n)


class Client:
    """One keep-alive connection: (status, seconds, response headers) per request."""

    def __init__(self, conn: Connection, port: int) -> None:
        self.conn, self.port = conn, port
        self.tap = _Tap(conn.reader)
        conn.reader = cast(asyncio.StreamReader, self.tap)

    async def chat(
        self, model: str, system: str, question: str, max_tokens: int
    ) -> tuple[int, float, dict[str, str]]:
        body = json.dumps(
            {
                "model": model,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                ],
                "temperature": 0,
                "max_tokens": max_tokens,
            }
        ).encode()
        raw = build_request(HOST, self.port, "/v1/chat/completions", body, {})
        began = time.perf_counter()
        status = await self.conn.request(raw)
        seconds = time.perf_counter() - began
        headers: dict[str, str] = {}
        for line in self.tap.head.decode("latin-1").split("\r\n")[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        return status, seconds, headers


def outcome(headers: dict[str, str]) -> str:
    """What answered: exact, semantic or miss (the engine)."""
    if headers.get("x-cache") == "hit":
        return "exact"
    if headers.get("x-semantic-cache") == "hit":
        return "semantic"
    return "miss"


EXPECTED = {"miss": "miss", "exact": "exact", "verified": "semantic", "plain": "semantic"}


async def end_to_end(port: int, rounds: int, max_tokens: int, seed: int) -> dict[str, Any]:
    client = Client(await Connection.open(HOST, port), port)
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    unexpected: dict[str, list[str]] = {k: [] for k in KINDS}
    similarity: dict[str, list[float]] = {"verified": [], "plain": []}
    errors: list[str] = []
    rng = random.Random(seed)

    async def one(kind: str, model: str, system: str, text: str, measured: bool) -> None:
        status, seconds, headers = await client.chat(model, system, text, max_tokens)
        if status != 200:
            errors.append(f"{kind} ({model}) {status}: {text}")
            return
        got = outcome(headers)
        if not measured:
            return
        if got != EXPECTED[kind]:
            unexpected[kind].append(f"{got} ({model}): {text}")
            return
        times[kind].append(seconds)
        if kind in similarity:
            similarity[kind].append(float(headers.get("x-semantic-similarity", "nan")))

    async def session(system: str, pairs: list[tuple[str, str]], measured: bool) -> None:
        for question, paraphrase in pairs:
            # New to both models' caches: the engine answers, each cache keeps the answer.
            await one("miss", "verified", system, question, measured)
            await one("miss", "plain", system, question, measured)
            hits = [
                ("exact", "verified", question),
                ("verified", "verified", paraphrase),
                ("plain", "plain", paraphrase),
            ]
            rng.shuffle(hits)  # interleaved, so machine noise hits every kind alike
            for kind, model, text in hits:
                await one(kind, model, system, text, measured)

    await session("You are a helpful assistant. Session warm-up.", PAIRS[:2], False)
    for r in range(rounds):
        order = list(PAIRS)
        rng.shuffle(order)
        await session(f"You are a helpful assistant. Session {r}.", order, True)
    client.conn.close()
    out: dict[str, Any] = {"errors": errors}
    for kind in KINDS:
        out[kind] = {
            "n": len(times[kind]),
            "p50_ms": pct(times[kind], 50),
            "p90_ms": pct(times[kind], 90),
            "mean_ms": statistics.fmean(times[kind]) * 1e3 if times[kind] else float("nan"),
            "unexpected": unexpected[kind],
        }
    for kind, values in similarity.items():
        out[kind]["similarity_mean"] = statistics.fmean(values) if values else float("nan")
    return out


async def lookup_cost(repeats: int, threshold: float | None) -> dict[str, Any]:
    from gateway.build import build_store, embedder_factory
    from gateway.config import EmbeddingsConfig, StoreConfig
    from gateway.payload import Payload
    from gateway.schemas import AssistantMessage, ChatChoice, ChatCompletion, Usage
    from plugins.semantic_cache import SemanticCache

    load = embedder_factory(EmbeddingsConfig())
    assert load is not None
    embedder = await load()
    q_vecs = await embedder.embed([q for q, _ in PAIRS])
    p_vecs = await embedder.embed([p for _, p in PAIRS])

    async def load_embedder() -> Any:
        return embedder

    caches, stores = {}, []
    for name, verify in (("verified", True), ("plain", False)):
        store = build_store(StoreConfig())  # one each: start-up loads what a store holds
        stores.append(store)
        kwargs: dict[str, Any] = {"verify": verify}
        if threshold is not None:
            kwargs["threshold"] = threshold
        cache = SemanticCache(**kwargs)
        gw = SimpleNamespace(
            store=store, embedder=embedder, metrics=None, load_embedder=load_embedder
        )
        await cache.startup(gateway=gw)  # type: ignore[arg-type]
        for i, (question, _) in enumerate(PAIRS):
            message = AssistantMessage(content=f"answer to: {question}")
            usage = Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
            choice = ChatChoice(index=0, message=message, finish_reason="stop")
            body = ChatCompletion(id="x", created=0, model="m", choices=[choice], usage=usage)
            await cache.add(f"pair-{i}", question, q_vecs[i], Payload.from_struct(body), 3600)
        caches[name] = cache
    times: dict[str, list[float]] = {name: [] for name in caches}
    embed_times: list[float] = []  # what a real hit also pays first: the question's vector
    hits: dict[str, set[int]] = {name: set() for name in caches}
    for rep in range(repeats + 1):  # the first pass warms up, unmeasured
        for i, (_, paraphrase) in enumerate(PAIRS):
            began = time.perf_counter()
            await embedder.embed([paraphrase])
            if rep:
                embed_times.append(time.perf_counter() - began)
            names = list(caches) if (rep + i) % 2 == 0 else list(caches)[::-1]
            for name in names:
                began = time.perf_counter()
                found = await caches[name].lookup(f"pair-{i}", paraphrase, p_vecs[i])
                elapsed = time.perf_counter() - began
                if rep:
                    times[name].append(elapsed)
                if found is not None and found.served:
                    hits[name].add(i)
    for cache in caches.values():
        await cache.shutdown()
    for store in stores:
        await store.close()
    await embedder.close()
    embedder.model.close()  # type: ignore[attr-defined]
    out: dict[str, Any] = {"repeats": repeats, "pairs": len(PAIRS)}
    out["embed_p50_ms"], out["embed_p90_ms"] = pct(embed_times, 50), pct(embed_times, 90)
    for name in caches:
        # Only pairs both caches served: the same FAISS search and store read on each side.
        both = hits["verified"] & hits["plain"]
        served = [t for k, t in enumerate(times[name]) if k % len(PAIRS) in both]
        out[name] = {
            "hits": len(hits[name]),
            "p50_ms": pct(served, 50),
            "p90_ms": pct(served, 90),
            "n": len(served),
        }
    out["verification_p50_ms"] = out["verified"]["p50_ms"] - out["plain"]["p50_ms"]
    return out


def report(res: dict[str, Any]) -> None:
    print(f"\n== bench/semantic_latency.py on {res['machine']}")
    e = res.get("end_to_end")
    if e:
        print(
            f"end to end, 1 client, {e['rounds']} rounds x {len(PAIRS)} questions, "
            f"max_tokens {e['max_tokens']}: latency at the client (ms)"
        )
        labels = {
            "verified": "semantic hit, verify on",
            "plain": "semantic hit, verify off",
            "exact": "exact-cache hit",
            "miss": "miss (engine answers)",
        }
        print(f"  {'kind':26s} {'n':>4s} {'p50':>9s} {'p90':>9s}  unexpected")
        for kind in ("verified", "plain", "exact", "miss"):
            r = e[kind]
            print(
                f"  {labels[kind]:26s} {r['n']:4d} {r['p50_ms']:9.2f} {r['p90_ms']:9.2f}"
                f"  {len(r['unexpected'])}"
            )
        for kind in KINDS:
            for line in e[kind]["unexpected"][:5]:
                print(f"    unexpected {kind}: {line}")
        if e["errors"]:
            print(f"  errors: {len(e['errors'])}, e.g. {e['errors'][:3]}")
    c = res.get("lookup")
    if c:
        print(
            f"in process, SemanticCache.lookup of a paraphrase ({c['repeats']} x "
            f"{c['pairs']} pairs; p50/p90 ms over pairs both served; hits of {c['pairs']})"
        )
        for name in ("verified", "plain"):
            r = c[name]
            print(f"  verify {'on ' if name == 'verified' else 'off'}  {r['p50_ms']:.3f} / "
                  f"{r['p90_ms']:.3f}   hits {r['hits']}")  # fmt: skip
        print(f"  verification's own cost, p50: {c['verification_p50_ms']:.3f} ms")
        print(f"  embedding the question first (not in lookup): {c['embed_p50_ms']:.2f} / "
              f"{c['embed_p90_ms']:.2f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=20, help="in-process lookups per pair")
    parser.add_argument("--threshold", type=float, default=None, help="default: the plugin's")
    parser.add_argument("--kv-cache-gb", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", default="", help="comma list of end_to_end,lookup")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    }
    if "end_to_end" not in skip:
        with tempfile.TemporaryDirectory() as d:
            text = config_text(args.threshold, args.kv_cache_gb)
            proc, port = start_gateway(text, Path(d), "semantic")
            try:
                res["end_to_end"] = asyncio.run(
                    end_to_end(port, args.rounds, args.max_tokens, args.seed)
                )
            finally:
                proc.terminate()
                proc.wait(30)
        res["end_to_end"] |= {"rounds": args.rounds, "max_tokens": args.max_tokens}
    if "lookup" not in skip:
        res["lookup"] = asyncio.run(lookup_cost(args.repeats, args.threshold))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    report(res)


if __name__ == "__main__":
    main()
