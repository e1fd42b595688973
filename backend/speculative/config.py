"""How the engine speculates: which proposer, how many guesses, the acceptance prior.
The names are the config file's and the command line's ([engine] num_speculative_tokens,
--num-speculative-tokens); `method` is what they call `speculative`."""

from __future__ import annotations

from dataclasses import dataclass

PROPOSERS = ("ngram", "self-draft")


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    method: str = "ngram"  # one of PROPOSERS
    num_speculative_tokens: int = 8  # k at most, per sequence and step
    # True: only requests that send "speculative": true; False: all but those sending false.
    speculative_opt_in: bool = False
    ngram_max: int = 4  # prompt lookup: longest suffix n-gram tried first...
    ngram_min: int = 2  # ...down to this length
    self_draft_layers: int = 8  # self-draft: the target's first layers + its norm and head
    prior_acceptance: float = 0.6  # acceptance assumed before a sequence has any history
    # False: every proposal is fed whole (fixed k), whatever it costs; for experiments
    # and for tests that must not depend on this machine's timings.
    adaptive_speculation: bool = True

    def __post_init__(self) -> None:
        if self.method not in PROPOSERS:
            raise ValueError(f"speculative method must be one of {PROPOSERS}, got {self.method!r}")
        if not 1 <= self.num_speculative_tokens <= 32:
            raise ValueError("num_speculative_tokens must be in [1, 32]")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError("need 1 <= ngram_min <= ngram_max")
        if self.self_draft_layers < 1:
            raise ValueError("self_draft_layers must be at least 1")
        if not 0.0 < self.prior_acceptance < 1.0:
            raise ValueError("prior_acceptance must be in (0, 1)")
