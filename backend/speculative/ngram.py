"""Prompt lookup (Saxena 2023): guesses continue an earlier occurrence of the suffix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backend.speculative.acceptance import MAX_RUN
from backend.speculative.proposer import Proposal, ProposalRequest

RECENT = 4  # occurrences kept per n-gram: the candidates a lookup chooses between


class NgramIndex:
    """Prompt lookup for one sequence: an earlier occurrence of its last n tokens (n from
    ngram_max down to ngram_min) and the tokens that followed it there.

    Of an n-gram's RECENT latest occurrences, the one whose match reaches furthest back
    is continued (the latest among equals): copying a text whose phrases repeat, the
    latest "and the" is often the wrong one, the one that also matches the tokens before
    it is the passage being copied. How far it reaches is the proposal's `run`.

    Kept incrementally: an n-gram is indexed once the token after it exists, so a lookup
    never finds the suffix itself, and each new token costs O(ngram_max) dict updates.
    """

    def __init__(self, ngram_min: int, ngram_max: int) -> None:
        self.ngram_min, self.ngram_max = ngram_min, ngram_max
        self._ends: dict[tuple[int, ...], list[int]] = {}  # n-gram -> ends of occurrences
        self._indexed = 0  # n-grams ending before this position are in the index

    def propose(self, tokens: Sequence[int], k: int) -> Proposal:
        length = len(tokens)
        for end in range(max(self._indexed, 1), length):  # index n-grams ending at `end`
            for n in range(self.ngram_min, min(self.ngram_max, end) + 1):
                ends = self._ends.setdefault(tuple(tokens[end - n : end]), [])
                ends.append(end)
                if len(ends) > RECENT:
                    del ends[0]
        self._indexed = max(self._indexed, length)
        if k <= 0:
            return Proposal([])
        for n in range(min(self.ngram_max, length - 1), self.ngram_min - 1, -1):
            occurrences = self._ends.get(tuple(tokens[length - n :]))
            if occurrences:
                run, found = max((_match_length(tokens, e, n), e) for e in occurrences)
                return Proposal(list(tokens[found : found + k]), run)
        return Proposal([])


def _match_length(tokens: Sequence[int], end: int, n: int) -> int:
    """How many tokens before `end` equal the sequence's last ones (n of them known to),
    counted up to MAX_RUN."""
    last, m = len(tokens) - 1, n
    while m < MAX_RUN and end - m - 1 >= 0 and tokens[end - m - 1] == tokens[last - m]:
        m += 1
    return m


class NgramProposer:
    """The n-gram proposer: each sequence's own NgramIndex, looked up before planning."""

    lazy = False
    pass_seconds = 0.0

    def propose(self, requests: Sequence[ProposalRequest]) -> list[Proposal]:
        out = []
        for r in requests:
            if r.ngram is None:
                raise ValueError("the n-gram proposer needs each sequence's NgramIndex")
            out.append(r.ngram.propose(r.token_ids, r.max_tokens))
        return out

    def fill(self, seqs: Sequence[Any]) -> None:
        raise NotImplementedError("prompt lookup proposes up front")
