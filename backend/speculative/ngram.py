"""Prompt lookup (Saxena 2023): guesses continue an earlier occurrence of the suffix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backend.speculative.proposer import ProposalRequest


class NgramIndex:
    """Prompt lookup for one sequence: the latest earlier occurrence of its last n tokens
    (n from ngram_max down to ngram_min) and the tokens that followed it there.

    Kept incrementally: an n-gram is indexed once the token after it exists, so a lookup
    never finds the suffix itself, and each new token costs O(ngram_max) dict updates.
    """

    def __init__(self, ngram_min: int, ngram_max: int) -> None:
        self.ngram_min, self.ngram_max = ngram_min, ngram_max
        self._ends: dict[tuple[int, ...], int] = {}  # n-gram -> end of its latest occurrence
        self._indexed = 0  # n-grams ending before this position are in the index

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        length = len(tokens)
        for end in range(max(self._indexed, 1), length):  # index n-grams ending at `end`
            for n in range(self.ngram_min, min(self.ngram_max, end) + 1):
                self._ends[tuple(tokens[end - n : end])] = end
        self._indexed = max(self._indexed, length)
        if k <= 0:
            return []
        for n in range(min(self.ngram_max, length - 1), self.ngram_min - 1, -1):
            found = self._ends.get(tuple(tokens[length - n :]))
            if found is not None:
                return list(tokens[found : found + k])
        return []


class NgramProposer:
    """The n-gram proposer: each sequence's own NgramIndex, looked up before planning."""

    lazy = False
    pass_seconds = 0.0

    def propose(self, requests: Sequence[ProposalRequest]) -> list[list[int]]:
        out = []
        for r in requests:
            if r.ngram is None:
                raise ValueError("the n-gram proposer needs each sequence's NgramIndex")
            out.append(r.ngram.propose(r.token_ids, r.max_tokens))
        return out

    def fill(self, seqs: Sequence[Any]) -> None:
        raise NotImplementedError("prompt lookup proposes up front")
