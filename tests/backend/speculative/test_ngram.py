"""Prompt lookup: the n-gram index against a brute-force search."""

from __future__ import annotations

import random

from backend.speculative import NgramIndex, Proposal
from backend.speculative.acceptance import MAX_RUN
from backend.speculative.ngram import RECENT


def _run(tokens: list[int], end: int, n: int) -> int:
    m = n
    while m < MAX_RUN and end - m - 1 >= 0 and tokens[end - m - 1] == tokens[-m - 1]:
        m += 1
    return m


def _brute_force(tokens: list[int], k: int, lo: int, hi: int) -> Proposal:
    """The longest n-gram with an earlier occurrence; of its RECENT latest occurrences,
    the one matching furthest back (then the latest)."""
    for n in range(min(hi, len(tokens) - 1), lo - 1, -1):
        suffix = tokens[-n:]
        ends = [e for e in range(n, len(tokens)) if tokens[e - n : e] == suffix][-RECENT:]
        if ends:
            run, best = max((_run(tokens, e, n), e) for e in ends)
            return Proposal(tokens[best : best + k], run)
    return Proposal([])


def test_ngram_continues_the_latest_earlier_occurrence() -> None:
    index = NgramIndex(2, 4)
    tokens = [1, 2, 3, 4, 9, 1, 2, 3, 5, 7, 1, 2, 3]
    # suffix [1, 2, 3] occurred twice before, both preceded by a mismatch: the latest one
    # was followed by 5, 7
    assert index.propose(tokens, 3) == Proposal([5, 7, 1], run=3)
    assert index.propose([5, 6], 3) == Proposal([])  # no earlier occurrence at all


def test_ngram_continues_the_occurrence_that_matches_furthest_back() -> None:
    """Copying "a b c x y" after "e b c x ... ": the suffix "c x" last occurred in the
    wrong phrase; the one whose tokens before it also match is the passage copied."""
    a, b, c, x, y, e, z = range(1, 8)
    source = [a, b, c, x, y, e, b, c, x, z]
    copy = [a, b, c, x]
    got = NgramIndex(2, 2).propose(source + copy, 2)
    assert got == Proposal([y, e], run=4)


def test_ngram_prefers_the_longest_match() -> None:
    index = NgramIndex(1, 3)
    tokens = [7, 8, 9, 1, 5, 9, 2, 7, 8, 9]
    # [8, 9] / [7, 8, 9] occurred at the start (-> 1); a bare [9] later (-> 2)
    assert index.propose(tokens, 1).tokens == [1]


def test_ngram_index_grown_incrementally_matches_brute_force() -> None:
    rng = random.Random(7)
    tokens: list[int] = []
    index = NgramIndex(1, 3)
    for _ in range(400):
        tokens.append(rng.randrange(6))
        if rng.random() < 0.5:  # lookups at irregular points, as a sequence grows
            assert index.propose(tokens, 4) == _brute_force(tokens, 4, 1, 3)
