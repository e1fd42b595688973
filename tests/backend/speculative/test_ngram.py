"""Prompt lookup: the n-gram index against a brute-force search."""

from __future__ import annotations

import random

from backend.speculative import NgramIndex


def _brute_force(tokens: list[int], k: int, lo: int, hi: int) -> list[int]:
    for n in range(min(hi, len(tokens) - 1), lo - 1, -1):
        suffix = tokens[-n:]
        for end in range(len(tokens) - 1, n - 1, -1):  # latest occurrence ending before len
            if tokens[end - n : end] == suffix:
                return tokens[end : end + k]
    return []


def test_ngram_continues_the_latest_earlier_occurrence() -> None:
    index = NgramIndex(2, 4)
    tokens = [1, 2, 3, 4, 9, 1, 2, 3, 5, 7, 1, 2, 3]
    # suffix [1, 2, 3] occurred twice before; the latest one was followed by 5, 7
    assert index.propose(tokens, 3) == [5, 7, 1]
    assert index.propose([5, 6], 3) == []  # no earlier occurrence at all


def test_ngram_prefers_the_longest_match() -> None:
    index = NgramIndex(1, 3)
    tokens = [7, 8, 9, 1, 5, 9, 2, 7, 8, 9]
    # [8, 9] / [7, 8, 9] occurred at the start (-> 1); a bare [9] later (-> 2)
    assert index.propose(tokens, 1) == [1]


def test_ngram_index_grown_incrementally_matches_brute_force() -> None:
    rng = random.Random(7)
    tokens: list[int] = []
    index = NgramIndex(1, 3)
    for _ in range(400):
        tokens.append(rng.randrange(6))
        if rng.random() < 0.5:  # lookups at irregular points, as a sequence grows
            assert index.propose(tokens, 4) == _brute_force(tokens, 4, 1, 3)
