"""The semantic cache's error bound, replayed: labelled pairs arrive over time and the
live false-hit rate is watched as the bound learns.

    python bench/semantic_replay.py [--pairs FILE] [--passes 8] [--max-error-rate 0.02]

Stream: `--passes` passes over the labelled pairs, each in a new random order (seeded);
with `--different-share`, each pass draws as many pairs with replacement, that share of
them different-meaning (the labelled sets are about half hard negatives, built to be
hard; real traffic repeats and rewords far more often than it nearly repeats).
For each pair, question `a` is cached in a partition of its own (a new one each pass:
the pass's users ask afresh, so only the bands' evidence carries over, not one entry's
own) and question `b` is looked up through the plugin's real path: FAISS
search, verification, then the error bound (`max_error_rate`, `confidence`;
policies/error_bound.py).
- served: a hit; wrong when the pair's label is "different". A `--shadow-rate` share of
  served hits is checked (the bound learns the outcome);
- held back (an exploration): the backend would answer; the bound learns the outcome;
- no verified candidate: a plain miss, nothing learned.
Outcomes are the pairs' labels: the replay stands in a perfect answer comparator for
the plugin's (answer embeddings, plugins/semantic_evidence.py), so it measures the
learning, not the comparator.

Reported per window of one pass: hits served, wrong hits, live false-hit rate (wrong /
served: what `llm_gateway_semantic_false_hit_rate` shows), recall (paraphrase pairs
served / paraphrase pairs), explorations, and which similarity bands the bound serves
at the window's end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HELD_OUT = ROOT / "bench" / "data" / "semantic_pairs_heldout.jsonl"


async def replay(
    path: Path,
    passes: int,
    max_error_rate: float,
    confidence: float,
    shadow_rate: float,
    floor: float,
    seed: int,
    different_share: float | None = None,
) -> dict[str, Any]:
    from gateway.build import build_store, embedder_factory
    from gateway.config import EmbeddingsConfig, StoreConfig
    from gateway.payload import Payload
    from plugins.semantic_cache import SemanticCache

    pairs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    load = embedder_factory(EmbeddingsConfig())
    assert load is not None
    embedder = await load()
    a_vecs = await embedder.embed([p["a"] for p in pairs])
    b_vecs = await embedder.embed([p["b"] for p in pairs])
    store = build_store(StoreConfig())
    cache = SemanticCache(threshold=floor, max_error_rate=max_error_rate, confidence=confidence)

    async def load_embedder() -> Any:
        return embedder

    gw = SimpleNamespace(store=store, metrics=None, load_embedder=load_embedder)
    await cache.startup(gateway=gw)  # type: ignore[arg-type]
    assert cache.bound is not None
    body = Payload.from_struct({"choices": [{"message": {"content": "cached answer"}}]})
    rng = random.Random(seed)
    windows = []
    total = {"served": 0, "wrong": 0}
    for n in range(passes):
        order = _draw(pairs, different_share, rng)
        w = {"pass": n, "served": 0, "wrong": 0, "same_served": 0, "explored": 0, "misses": 0}
        for i in order:
            partition = f"pass-{n}-pair-{i}"
            await cache.add(partition, pairs[i]["a"], a_vecs[i], body, 3600)
            found = await cache.lookup(partition, pairs[i]["b"], b_vecs[i])
            wrong = pairs[i]["label"] != "same"
            if found is None:
                w["misses"] += 1
            elif found.served:
                w["served"] += 1
                w["wrong"] += wrong
                w["same_served"] += not wrong
                if rng.random() < shadow_rate:
                    cache.bound.observe(found.similarity, wrong, found.entry.evidence)
            else:
                w["explored"] += 1
                cache.bound.observe(found.similarity, wrong, found.entry.evidence)
        same = sum(pairs[i]["label"] == "same" for i in order)
        w["live_false_hit_rate"] = w["wrong"] / w["served"] if w["served"] else 0.0
        w["recall"] = w["same_served"] / same
        # Which similarity bands the bound serves at the window's end, lowest first.
        w["bands_served"] = "".join("x" if b else "." for b in cache.bound.served_bands())
        total["served"] += w["served"]
        total["wrong"] += w["wrong"]
        served = total["served"]
        w["cumulative_false_hit_rate"] = total["wrong"] / served if served else 0.0
        windows.append(w)
        print(json.dumps(w), flush=True)
    await cache.shutdown()
    await store.close()
    await embedder.close()
    embedder.model.close()  # type: ignore[attr-defined]
    return {"pairs": len(pairs), "file": path.name, "max_error_rate": max_error_rate,
            "confidence": confidence, "shadow_rate": shadow_rate, "floor": floor,
            "different_share": different_share, "windows": windows}  # fmt: skip


def _draw(
    pairs: list[dict[str, str]], different_share: float | None, rng: random.Random
) -> list[int]:
    """One pass: every pair once in a new order, or, with `different_share`, as many
    draws (with replacement) of which that share are different-meaning pairs."""
    if different_share is None:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        return order
    same = [i for i, p in enumerate(pairs) if p["label"] == "same"]
    different = [i for i, p in enumerate(pairs) if p["label"] != "same"]
    return [rng.choice(different if rng.random() < different_share else same) for _ in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, default=HELD_OUT)
    parser.add_argument("--passes", type=int, default=8)
    parser.add_argument("--max-error-rate", type=float, default=0.02)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--shadow-rate", type=float, default=0.1)
    parser.add_argument("--floor", type=float, default=0.7, help="the index's own threshold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--different-share",
        type=float,
        default=None,
        help="draw each pass with this share of different-meaning pairs (the sets are "
        "about half hard negatives; traffic has fewer)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res = asyncio.run(
        replay(args.pairs, args.passes, args.max_error_rate, args.confidence,
               args.shadow_rate, args.floor, args.seed, args.different_share)
    )  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    share = res["different_share"]
    mix = f", {share:.0%} different-meaning draws" if share is not None else ""
    print(f"\n== replay of {res['file']} ({res['pairs']} pairs a pass{mix}), bound "
          f"{res['max_error_rate']:.0%} at {res['confidence']:.0%} confidence")  # fmt: skip
    edges = ", ".join(f"{b / 5:.0%}" for b in range(5))
    print(f"bands: 5 equal similarity bands from --floor {res['floor']} to 1 ({edges} of the way)")
    print("pass  served  wrong  live-FH  cumulative-FH  recall  explored  bands served")
    for w in res["windows"]:
        print(
            f"{w['pass']:4d}  {w['served']:6d}  {w['wrong']:5d}  {w['live_false_hit_rate']:7.1%}"
            f"  {w['cumulative_false_hit_rate']:13.1%}  {w['recall']:6.1%}  {w['explored']:8d}"
            f"  {w['bands_served']}"
        )


if __name__ == "__main__":
    main()
