"""How often a sequence's guesses are accepted: the planner's estimate, per sequence."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class AcceptanceTracker:
    """Per-sequence estimate of a = P(guess i accepted | guesses before it accepted).

    Counts decay by `decay` per update, so the estimate follows the text as it changes;
    a step without guesses also decays them toward the prior, so a sequence that was
    cut off for low acceptance is tried again after a while rather than never.
    """

    prior: float
    weight: float = 2.0  # pseudo-trials behind the prior
    decay: float = 0.9
    accepted: float = 0.0
    tried: float = 0.0

    @property
    def rate(self) -> float:
        return (self.accepted + self.prior * self.weight) / (self.tried + self.weight)

    def record(self, num_drafted: int, num_accepted: int) -> None:
        # Guesses after the first rejection were never judged: they carry no evidence.
        tried = min(num_accepted + 1, num_drafted)
        self.accepted = self.accepted * self.decay + num_accepted
        self.tried = self.tried * self.decay + tried

    def idle(self) -> None:
        self.accepted *= self.decay
        self.tried *= self.decay
