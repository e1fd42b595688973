"""One sequence's token and KV bookkeeping, shared by the scheduler and block manager.

Plain Python (no torch): the scheduler and block manager only count tokens and blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass(slots=True, eq=False)
class Sequence:
    seq_id: int
    token_ids: list[int]  # prompt followed by the tokens generated so far
    num_prompt_tokens: int
    status: SequenceStatus = SequenceStatus.WAITING
    # Tokens whose K/V are in the cache, prefix-cache hits included. The next forward
    # pass feeds token_ids[num_computed_tokens:] (or a chunk of it).
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # of the prompt, how many came from the prefix cache
    block_table: list[int] = field(default_factory=list)  # KV block ids, in token order
    arrival: int = 0  # admission order; a lower value has priority when memory is short
    # Another choice of the same prompt (n > 1): this one is admitted only once that one's
    # prompt is computed, so its full blocks come from the prefix cache instead of again.
    after: Sequence | None = None
    # Speculative guesses fed after the last token this step (not in token_ids, never
    # hashed into the prefix cache); cleared once verified.
    draft: list[int] = field(default_factory=list)
    # The prompt's own tokens are scored (prompt log-probabilities): the runner computes
    # logits for every prompt row, and the block manager gives it no prefix-cache hits
    # (a cached block holds K/V, not the log-probabilities of its tokens).
    prompt_logprobs: int | None = None  # set: scored, with this many best alternatives

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed_tokens < self.num_prompt_tokens

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
