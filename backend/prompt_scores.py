"""Log-probabilities of tokens that were fed rather than sampled (a prompt's own tokens),
from the hidden states of the rows before them.

Row i's logits predict the token after it, so the target of a prompt row at position p
is token p + 1, and the first prompt token has no score. Log-probabilities are of the
model's raw distribution (no penalties, bias or temperature), as vLLM's prompt_logprobs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from backend.model import LM_HEAD_MAX_ROWS

# Rows whose logits are made at once: [64, vocab] float32 (~12 MB at a 49k vocabulary),
# not a whole prefill chunk's (hundreds of MB), and few enough that a packed LM head
# is not expanded for each pass (89-token prompt scored: 559 ms at 128 rows a pass,
# 393 ms at 64; plain prefill 360 ms; 600 tokens: 2447 / 2013 / 1507 ms).
ROWS_PER_PASS = LM_HEAD_MAX_ROWS


@dataclass(frozen=True, slots=True)
class TokenScore:
    logprob: float
    rank: int  # 1 + how many tokens the model found likelier (1: its top choice)
    top: list[tuple[int, float]]  # the k likeliest (token id, logprob), best first


def score_tokens(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    targets: torch.Tensor,
    k: int,
) -> list[TokenScore]:
    """hidden: [M, hidden] rows; targets: [M] the token each row is scored on;
    logits_of: [m, hidden] -> [m, vocab] float32 (the LM head)."""
    scores: list[TokenScore] = []
    for lo in range(0, hidden.shape[0], ROWS_PER_PASS):
        logprobs = torch.log_softmax(logits_of(hidden[lo : lo + ROWS_PER_PASS]), dim=-1)
        target = targets[lo : lo + ROWS_PER_PASS].unsqueeze(1)  # [m, 1]
        chosen = logprobs.gather(1, target)  # [m, 1]
        ranks = ((logprobs > chosen).sum(dim=1) + 1).tolist()
        tops: list[list[tuple[int, float]]] = [[] for _ in ranks]
        if k:
            best = torch.topk(logprobs, k, dim=-1)
            tops = [
                list(zip(ids, lps, strict=True))
                for ids, lps in zip(best.indices.tolist(), best.values.tolist(), strict=True)
            ]
        for lp, rank, top in zip(chosen.squeeze(1).tolist(), ranks, tops, strict=True):
            scores.append(TokenScore(lp, rank, top))
    return scores
