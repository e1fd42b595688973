"""bench/cache.py's semantic-cache part runs against the plugin as it is (it had drifted:
the plugin's startup and add had changed under it), on a few labelled pairs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.cache import bench_semantic

# Each half (even lines, odd lines: the bench reports both) has both labels.
PAIRS = [
    ("How do I boil an egg?", "how to boil eggs", "same", "paraphrase"),
    ("What is the capital of Peru?", "Capital city of Peru?", "same", "paraphrase"),
    ("Convert 5 km to miles", "Convert 5 miles to km", "different", "reversal"),
    ("Turn on dark mode in Chrome", "Turn off dark mode in Chrome", "different", "antonym"),
]


def test_semantic_part_scores_a_pairs_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "pairs.jsonl"
    rows = [dict(zip(("a", "b", "label", "category"), p, strict=True)) for p in PAIRS]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    res = asyncio.run(bench_semantic([0.8], path))
    assert (res["pairs"], res["same"], res["different"]) == (4, 2, 2)
    ours = res["ours_0.8"]
    assert 0 <= ours["recall"] <= 1 and 0 <= ours["false_hit_rate"] <= 1
    assert set(ours["hit_rate_by_category"]) == {"paraphrase", "reversal", "antonym"}
    assert res["plain_cosine_0.8"]["hit_rate_by_category"]["antonym"] == 1.0  # why it verifies
