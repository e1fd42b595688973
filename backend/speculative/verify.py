"""Speculative decoding, the verification half: which guessed tokens a sequence keeps.

The target model ran over [last token, g1 .. gk] in one step, giving k + 1 rows of
logits: row i is the target's next-token distribution after the guesses before g(i+1).
Each row is processed exactly as plain decoding would process it at that point (bias,
penalties over the history including the earlier guesses, temperature, top-k/top-p,
min-p), so:

- greedy rows keep guesses while they equal the row's argmax, then emit the argmax at
  the first mismatch (or the bonus row's after k hits): the same tokens as plain
  greedy decoding;
- sampled rows use standard rejection sampling (Leviathan et al. 2023; Chen et al.
  2023): keep g with probability min(1, p(g) / q(g)); at the first rejection draw from
  norm(max(0, p - q)); after k acceptances draw the bonus token from the last row. q is
  the proposer's distribution: a point mass on g for deterministic proposers (n-gram,
  greedy drafts), so the residual is p with g removed. The emitted tokens are then
  distributed exactly as the target's own samples.

Uniforms come from the request's generator, so a seeded request reproduces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from backend.sampler import (
    SampleRequest,
    SampleResult,
    build_results,
    draw,
    processed_logits,
    sampling_probs,
    uniforms,
)


def verify_draft(
    logits: torch.Tensor,
    draft: Sequence[int],
    row: SampleRequest,
    draft_probs: torch.Tensor | None = None,
) -> list[SampleResult]:
    """logits [k+1, vocab] for one sequence; draft: its k guesses; draft_probs [k, vocab]
    (None: each guess was certain) -> the emitted tokens, 1 to k + 1 of them."""
    k = len(draft)
    if logits.shape[0] != k + 1:
        raise ValueError(f"{logits.shape[0]} rows of logits for {k} guesses")
    if logits.dtype != torch.float32:
        logits = logits.float()
    rows = [_at(row, draft[:i]) for i in range(k + 1)]
    processed = processed_logits(logits, list(range(k + 1)), rows)
    if row.params.greedy:
        best: list[int] = torch.argmax(processed, dim=-1).tolist()
        n = 0
        while n < k and draft[n] == best[n]:
            n += 1
        tokens = [*draft[:n], best[n]]
    else:
        tokens = _rejection_sample(processed, draft, rows, draft_probs)
    used = len(tokens)
    want = list(range(used)) if row.params.logprobs is not None else []
    logprobs = torch.log_softmax(processed[:used], dim=-1) if want else None
    ids = torch.tensor(tokens, device=logits.device)
    return build_results(ids, want, rows[:used], logprobs)


def _rejection_sample(
    processed: torch.Tensor,
    draft: Sequence[int],
    rows: list[SampleRequest],
    draft_probs: torch.Tensor | None,
) -> list[int]:
    probs = sampling_probs(processed, rows, owned=False)
    probs = probs / probs.sum(dim=-1, keepdim=True)  # [k+1, vocab]
    one = [rows[0]]
    tokens: list[int] = []
    for i, guess in enumerate(draft):
        p = float(probs[i, guess])
        q = 1.0 if draft_probs is None else float(draft_probs[i, guess])
        u = float(uniforms(one, probs.device)[0])
        if u * q < p:  # accept with probability min(1, p / q)
            tokens.append(guess)
            continue
        if draft_probs is None:
            residual = probs[i].clone()
            residual[guess] = 0.0
        else:
            residual = (probs[i] - draft_probs[i].to(probs.dtype)).clamp_min_(0.0)
        if float(residual.sum()) <= 0.0:  # p == q: a rejection has probability zero
            residual = probs[i]
        tokens.append(int(draw(residual.unsqueeze(0), uniforms(one, probs.device))[0]))
        return tokens
    tokens.append(int(draw(probs[len(draft)].unsqueeze(0), uniforms(one, probs.device))[0]))
    return tokens


def _at(row: SampleRequest, guesses: Sequence[int]) -> SampleRequest:
    """The row as plain decoding would see it after emitting `guesses`."""
    if not guesses or not row.params.needs_history:
        return row
    return SampleRequest(
        row.params, row.generator, row.prompt_token_ids, [*row.output_token_ids, *guesses]
    )
