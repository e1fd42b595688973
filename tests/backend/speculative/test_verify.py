"""Verification: greedy keeps exactly what plain decoding would, and rejection sampling
leaves the target's distribution unchanged (a statistical test over many seeded draws)."""

from __future__ import annotations

import pytest
import torch

from backend.sampler import SampleRequest
from backend.sampling_params import SamplingParams
from backend.speculative.verify import verify_draft


def test_greedy_verify_keeps_the_matching_prefix_then_corrects() -> None:
    logits = torch.full((4, 10), -5.0)
    for row, best in enumerate([3, 4, 8, 1]):
        logits[row, best] = 5.0
    row = SampleRequest(SamplingParams(temperature=0.0), None)
    assert [r.token_id for r in verify_draft(logits, [3, 4, 5], row)] == [3, 4, 8]
    assert [r.token_id for r in verify_draft(logits, [3, 4, 8], row)] == [3, 4, 8, 1]  # bonus
    assert [r.token_id for r in verify_draft(logits, [0, 4, 8], row)] == [3]


def test_greedy_verify_applies_penalties_over_the_guesses() -> None:
    # Row 1's best token is 2, but 2 was just guessed: a repetition penalty makes 5 win,
    # exactly as plain decoding after emitting 2 would.
    logits = torch.zeros(2, 6)
    logits[0, 2] = 3.0
    logits[1, 2], logits[1, 5] = 3.0, 2.0
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    row = SampleRequest(params, None, [0], [])
    assert [r.token_id for r in verify_draft(logits, [2], row)] == [2, 5]


VOCAB = 5


TARGET = torch.tensor([1.0, 0.2, -0.5, 0.7, 0.0])


DRAFT_Q = torch.tensor([0.5, 0.1, 0.1, 0.2, 0.1])


def _chi_square_ok(counts: torch.Tensor, probs: torch.Tensor) -> bool:
    expected = probs * counts.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    return chi2 < 20.5  # p = 0.0004 at 4 degrees of freedom: fails only when wrong


@pytest.mark.parametrize("with_q", [False, True], ids=["point-mass guess", "draft distribution"])
def test_rejection_sampling_preserves_the_target_distribution(with_q: bool) -> None:
    params = SamplingParams(temperature=1.0, seed=0)
    gen = torch.Generator().manual_seed(1234)
    guess_gen = torch.Generator().manual_seed(99)
    p = torch.softmax(TARGET, dim=-1).unsqueeze(0)
    first = torch.zeros(VOCAB)
    second_given_first = torch.zeros(VOCAB, VOCAB)
    draws = 2_000  # a wrong rule (e.g. keeping every guess) is off by a chi2 of hundreds
    for _ in range(draws):
        if with_q:
            g0, g1 = torch.multinomial(DRAFT_Q, 2, replacement=True, generator=guess_gen).tolist()
            q = DRAFT_Q.expand(2, VOCAB)
        else:
            g0, g1, q = 0, 1, None  # fixed guesses, as prompt lookup makes them
        out = verify_draft(
            TARGET.clone().expand(3, VOCAB).contiguous(), [g0, g1], SampleRequest(params, gen), q
        )
        t = [r.token_id for r in out]
        first[t[0]] += 1
        if len(t) > 1:
            second_given_first[t[0], t[1]] += 1
    assert _chi_square_ok(first, p[0])
    # The second token, whatever the first was, also follows the target (rows are equal
    # here, so its distribution is p too).
    assert _chi_square_ok(second_given_first.sum(0), p[0])
