"""bench/semantic_replay.py runs against the plugin as it is: on a stream of paraphrase
pairs the error bound holds hits back until enough answers agreed, then serves them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.semantic_replay import replay

PAIRS = [
    ("How do I boil an egg?", "how to boil eggs"),
    ("What is the capital of Peru?", "Capital city of Peru?"),
    ("How do I reset my password?", "how can i reset my password"),
    ("What is a mutex?", "what's a mutex"),
    ("How do I reverse a list in Python?", "python: reverse a list"),
]


def test_hits_start_once_the_evidence_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"a": a, "b": b, "label": "same", "category": "paraphrase"}) + "\n"
            for a, b in PAIRS
        )
    )
    # A loose bound (50%): a band is served after 7 agreeing answers in it.
    res = asyncio.run(replay(path, 6, 0.5, 0.95, 0.0, 0.7, seed=0))
    first, last = res["windows"][0], res["windows"][-1]
    assert first["served"] == 0 and first["explored"] == 5  # no evidence yet
    assert last["served"] > 0 and last["wrong"] == 0
    assert last["live_false_hit_rate"] == 0.0
    assert "x" in last["bands_served"]
