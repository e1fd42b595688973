"""What every proposer does: the interface the engine's speculation step talks to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from backend.speculative.ngram import NgramIndex


class Proposer(Protocol):
    """Guesses the next tokens of many sequences at once.

    lazy = False (n-gram lookup): guessing is cheap, so `propose` runs before planning
    and the plan sees how many guesses each sequence has. lazy = True (model guessers):
    the engine plans with the room each sequence has, schedules the step with that many
    placeholder guesses (so their KV slots exist), then `fill`s them in one batched pass.
    """

    lazy: bool
    pass_seconds: float  # one guessing pass for one sequence (0: negligible), for planning

    def propose(self, requests: Sequence[ProposalRequest]) -> list[Proposal]: ...

    def fill(self, seqs: Sequence[Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class Proposal:
    tokens: list[int]  # the guesses, in order
    # Tokens just before the first guess that agree with the source the guesses continue
    # (prompt lookup: the matched suffix's length); 0 for a model proposer. The planner's
    # acceptance estimate is kept per run (acceptance.py).
    run: int = 0


@dataclass(slots=True)
class ProposalRequest:
    token_ids: Sequence[int]  # everything so far, prompt included
    max_tokens: int  # at most this many guesses
    ngram: NgramIndex | None = None  # the sequence's own lookup index (n-gram proposer)
