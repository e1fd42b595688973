"""sample_batch: per-row parameters in one batch, penalties, logit_bias, min_p, logprobs."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import torch

from backend.sampler import (
    SampleRequest,
    SampleResult,
    _apply_bias_and_penalties,
    _truncation_floor,
    sample,
    sample_batch,
)
from backend.sampling_params import SamplingParams

CPU = torch.device("cpu")

# One row of each kind; the batch-invariance tests mix them all.
MIXED: list[dict[str, Any]] = [
    {"temperature": 0.0},
    {"temperature": 0.8, "seed": 1},
    {"temperature": 1.0, "top_k": 20, "seed": 2},
    {"temperature": 0.7, "top_p": 0.9, "seed": 3},
    {"temperature": 0.9, "min_p": 0.1, "seed": 4},
    {"temperature": 1.0, "top_k": 50, "top_p": 0.8, "min_p": 0.05, "seed": 5},
    {
        "temperature": 0.9,
        "repetition_penalty": 1.3,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.4,
        "seed": 6,
    },
    {"temperature": 0.0, "repetition_penalty": 1.5, "logprobs": 3},
    {"temperature": 1.0, "logprobs": 5, "seed": 7},
    {"temperature": 0.6, "logprobs": 0, "logit_bias": {3: 5.0, 10: -100.0}, "seed": 8},
    {"temperature": 1.3, "top_p": 0.5, "seed": 33},  # last, flattest: the nucleus needs a sort
]


def _request(params: SamplingParams, prompt: list[int], output: list[int]) -> SampleRequest:
    return SampleRequest(params, params.make_generator(CPU), prompt, output)


def _run(
    configs: list[dict[str, Any]], logits_per_step: list[torch.Tensor], order: list[int]
) -> list[list[SampleResult]]:
    """Decodes len(logits_per_step) steps of the rows `order` (indices into configs) in
    one batch; returns results[row][step] for each row in `order`."""
    vocab = logits_per_step[0].shape[1]
    rows = []
    for i in order:
        prompt = [(7 * i + 3 * j) % vocab for j in range(12)]
        rows.append(_request(SamplingParams(**configs[i]), prompt, []))
    out: list[list[SampleResult]] = [[] for _ in order]
    for logits in logits_per_step:
        results = sample_batch(logits[order], rows)
        for pos, (row, result) in enumerate(zip(rows, results, strict=True)):
            out[pos].append(result)
            assert isinstance(row.output_token_ids, list)
            row.output_token_ids.append(result.token_id)
    return out


# ---- the key property: a row does not care what else is in the batch ---------------------


@pytest.mark.parametrize(("vocab", "steps"), [(1000, 6), (49152, 3)])
def test_row_gives_identical_results_alone_and_in_a_mixed_batch(vocab: int, steps: int) -> None:
    gen = torch.Generator().manual_seed(vocab)
    scale = torch.linspace(3.0, 0.05, len(MIXED)).unsqueeze(1)  # some sharp rows, some flat
    logits = [torch.randn(len(MIXED), vocab, generator=gen) * scale for _ in range(steps)]
    everything = list(range(len(MIXED)))
    batched = _run(MIXED, logits, everything)
    shuffled = _run(MIXED, logits, everything[::-1])[::-1]
    for i in everything:
        alone = _run(MIXED, logits, [i])[0]
        assert alone == batched[i], MIXED[i]  # exact: token ids, logprobs and top lists
        assert shuffled[i] == batched[i], MIXED[i]
    assert any(len({r.token_id for r in results}) > 1 for results in batched)


def test_sample_is_a_batch_of_one() -> None:
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=0.9, top_p=0.95, min_p=0.02, seed=11)
    gen_single, gen_batch = params.make_generator(CPU), params.make_generator(CPU)
    for row in logits:
        want = sample_batch(row.unsqueeze(0), [SampleRequest(params, gen_batch, [], [])])
        assert sample(row, params, gen_single) == want[0].token_id


def test_greedy_rows_are_the_argmax() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 5000, generator=gen)
    params = [
        SamplingParams(temperature=0.0) if i % 2 else SamplingParams(temperature=1.0, seed=i)
        for i in range(8)
    ]
    rows = [_request(p, [], []) for p in params]
    results = sample_batch(logits, rows)
    for i in range(1, 8, 2):
        assert results[i].token_id == int(torch.argmax(logits[i]))


def test_logits_are_not_modified() -> None:
    logits = torch.randn(len(MIXED), 400, generator=torch.Generator().manual_seed(3))
    before = logits.clone()
    _run(MIXED, [logits], list(range(len(MIXED))))
    assert torch.equal(logits, before)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="rows"):
        sample_batch(torch.zeros(2, 10), [_request(SamplingParams(), [], [])])


def test_other_dtypes_are_upcast() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0]], dtype=torch.bfloat16)
    assert (
        sample_batch(logits, [_request(SamplingParams(temperature=0.0), [], [])])[0].token_id == 1
    )


# ---- penalties and bias: exactly the expected logits change --------------------------------

BASE = [2.0, -1.0, 0.5, -3.0, 1.5, 0.0]


def _processed(prompt: list[int], output: list[int], **kwargs: Any) -> list[float]:
    row = torch.tensor(BASE)
    _apply_bias_and_penalties(row, SampleRequest(SamplingParams(**kwargs), None, prompt, output))
    return row.tolist()


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    # Seen: 0 (+, prompt), 1 (-, prompt and output twice), 4 (+, output). Unseen: 2, 3, 5.
    got = _processed([0, 1], [1, 4, 1], repetition_penalty=2.0)
    assert got == pytest.approx([1.0, -2.0, 0.5, -3.0, 0.75, 0.0])
    assert [got[i] for i in (2, 3, 5)] == [BASE[i] for i in (2, 3, 5)]  # untouched, exactly


def test_presence_penalty_counts_output_tokens_once_and_ignores_the_prompt() -> None:
    got = _processed([0, 2], [1, 4, 1], presence_penalty=0.5)
    assert got == pytest.approx([2.0, -1.5, 0.5, -3.0, 1.0, 0.0])


def test_frequency_penalty_scales_with_the_output_count() -> None:
    got = _processed([0, 2], [1, 4, 1, 1], frequency_penalty=0.25)
    assert got == pytest.approx([2.0, -1.75, 0.5, -3.0, 1.25, 0.0])


def test_penalties_combine_repetition_first() -> None:
    # token 4 (output x2): 1.5 / 1.5 = 1.0, then - (0.3 + 2 * 0.2) = 0.3
    # token 0 (prompt only): 2.0 / 1.5; token 1 (output x1): -1 * 1.5 - 0.5
    got = _processed(
        [0],
        [4, 1, 4],
        repetition_penalty=1.5,
        presence_penalty=0.3,
        frequency_penalty=0.2,
    )
    assert got == pytest.approx([2.0 / 1.5, -1.5 - 0.5, 0.5, -3.0, 0.3, 0.0])


def test_negative_presence_and_frequency_penalties_encourage_repeats() -> None:
    got = _processed([], [5, 5], presence_penalty=-1.0, frequency_penalty=-0.5)
    assert got == pytest.approx([*BASE[:5], 2.0])


def test_logit_bias_is_added_before_the_penalties() -> None:
    # token 2: 0.5 + 1.5 = 2.0, then seen -> / 2; token 3: -3 - 1 = -4, unseen.
    got = _processed([2], [], logit_bias={2: 1.5, 3: -1.0, 99: 5.0}, repetition_penalty=2.0)
    assert got == pytest.approx([2.0, -1.0, 1.0, -4.0, 1.5, 0.0])  # 99: outside, ignored


def test_penalties_reach_the_reported_logprobs() -> None:
    params = SamplingParams(temperature=0.0, logprobs=6, frequency_penalty=1.0, logit_bias={3: 4})
    logits = torch.tensor([BASE])
    result = sample_batch(logits, [SampleRequest(params, None, [], [0, 0])])[0]
    expected = torch.log_softmax(torch.tensor([0.0, -1.0, 0.5, 1.0, 1.5, 0.0]), dim=0)
    assert dict(result.top_logprobs) == pytest.approx(dict(enumerate(expected.tolist())))
    assert result.token_id == 4


def test_logit_bias_forces_or_bans_a_token() -> None:
    logits = torch.randn(1, 2000, generator=torch.Generator().manual_seed(4))
    best = int(torch.argmax(logits))
    worst = int(torch.argmin(logits))
    forced = SamplingParams(temperature=1.0, seed=1, logit_bias={worst: 100})
    gen = forced.make_generator(CPU)
    tokens = {sample(logits[0], forced, gen) for _ in range(200)}
    assert tokens == {worst}
    banned = SamplingParams(temperature=0.0, logit_bias={best: -100})
    second = int(torch.topk(logits[0], 2).indices[1])
    assert sample(logits[0], banned, None) == second


# ---- min_p ---------------------------------------------------------------------------------


def test_min_p_drops_tokens_below_the_fraction_of_the_top_probability() -> None:
    # probs ~ [0.46, 0.28, 0.17, 0.06, 0.02, 0.006]: min_p 0.3 keeps those >= 0.138.
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.0, -1.0, -2.2]])
    params = SamplingParams(temperature=1.0, min_p=0.3, seed=5)
    rows = [SampleRequest(params, torch.Generator().manual_seed(s), [], []) for s in range(600)]
    counts = Counter(r.token_id for r in sample_batch(logits.expand(600, -1), rows))
    assert set(counts) == {0, 1, 2}
    kept = torch.softmax(logits[0, :3], dim=0).tolist()
    for i, p in enumerate(kept):
        assert counts[i] / 600 == pytest.approx(p, abs=0.07)


def test_min_p_applies_after_temperature() -> None:
    logits = torch.tensor([[1.0, 0.0]])  # t=1: ratio e^-1 = 0.37; t=0.5: e^-2 = 0.135
    for temperature, expected in [(1.0, {0, 1}), (0.5, {0})]:
        params = SamplingParams(temperature=temperature, min_p=0.2, seed=9)
        gen = params.make_generator(CPU)
        assert {sample(logits[0], params, gen) for _ in range(300)} == expected


# ---- logprobs ------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.5])
@pytest.mark.parametrize("k", [0, 1, 5, 20])
def test_logprobs_report_the_processed_distribution(temperature: float, k: int) -> None:
    logits = torch.randn(3, 700, generator=torch.Generator().manual_seed(k))
    params = SamplingParams(temperature=temperature, top_k=40, logprobs=k, seed=k)
    rows = [_request(params, [], []) for _ in range(3)]
    for row_logits, result in zip(logits, sample_batch(logits, rows), strict=True):
        # Before temperature and truncation: log_softmax of the raw logits (no penalties).
        reference = torch.log_softmax(row_logits, dim=0)
        assert result.logprob == pytest.approx(float(reference[result.token_id]), abs=1e-6)
        assert len(result.top_logprobs) == k
        values = [lp for _, lp in result.top_logprobs]
        assert values == sorted(values, reverse=True)
        best = torch.topk(reference, k)
        assert [t for t, _ in result.top_logprobs] == best.indices.tolist()
        assert values == pytest.approx(best.values.tolist(), abs=1e-6)
        if k and result.token_id == int(torch.argmax(row_logits)):
            assert result.top_logprobs[0] == (result.token_id, result.logprob)
    if temperature == 0.0 and k:
        assert all(r.top_logprobs[0][0] == r.token_id for r in sample_batch(logits, rows))


def test_logprobs_off_reports_nothing() -> None:
    result = sample_batch(torch.randn(1, 50), [_request(SamplingParams(seed=1), [], [])])[0]
    assert result.logprob is None
    assert result.top_logprobs == []


# ---- seeding and distributions ---------------------------------------------------------------


def test_seeded_rows_reproduce_and_seeds_differ() -> None:
    logits = torch.randn(1, 3000, generator=torch.Generator().manual_seed(6))

    def run(seed: int) -> list[int]:
        rows = [_request(SamplingParams(temperature=1.0, top_p=0.95, seed=seed), [], [])]
        return [sample_batch(logits, rows)[0].token_id for _ in range(40)]

    first = run(42)
    assert run(42) == first
    assert run(43) != first
    assert len(set(first)) > 5


def _nucleus(logits: list[float], temperature: float, top_p: float) -> list[float]:
    scaled = [x / temperature for x in logits]
    top = max(scaled)
    weights = [math.exp(x - top) for x in scaled]
    total = sum(weights)
    probs = [w / total for w in weights]
    kept: set[int] = set()
    mass = 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        if mass >= top_p:
            break
        kept.add(i)
        mass += probs[i]
    return [p / mass if i in kept else 0.0 for i, p in enumerate(probs)]


def test_temperature_and_top_p_match_the_renormalized_distribution() -> None:
    # softmax(l / 0.7) ~ [.40, .24, .18, .11, .047, .021, .0071, .0024]: the prefix before
    # the 5th token holds .93 >= 0.9, so four tokens stay.
    raw = [2.0, 1.6, 1.4, 1.05, 0.45, -0.1, -0.85, -1.6]
    expected = _nucleus(raw, 0.7, 0.9)
    assert sum(p > 0 for p in expected) == 4
    params = SamplingParams(temperature=0.7, top_p=0.9)
    batch, steps = 1000, 20
    rows = [SampleRequest(params, torch.Generator().manual_seed(s), [], []) for s in range(batch)]
    logits = torch.tensor([raw]).expand(batch, -1)
    counts = Counter(r.token_id for _ in range(steps) for r in sample_batch(logits, rows))
    draws = batch * steps
    assert set(counts) == {i for i, p in enumerate(expected) if p > 0}
    for i, p in enumerate(expected):
        assert counts[i] / draws == pytest.approx(p, abs=0.02), (i, counts)


def test_large_vocabulary_draw_matches_the_distribution() -> None:
    # Past 4096 tokens the draw picks a block of tokens, then a token in it: put the mass
    # in several blocks, the padded last one included (8229 is not a multiple of 256).
    vocab, batch, steps = 8229, 400, 20
    raw = torch.full((vocab,), -40.0)
    places = {5: 1.0, 300: 0.5, 301: 0.5, 4100: 0.0, 8228: 1.2, 8200: -0.7}
    for token, value in places.items():
        raw[token] = value
    expected = torch.softmax(raw, dim=0)
    params = SamplingParams(temperature=1.0)
    rows = [SampleRequest(params, torch.Generator().manual_seed(s), [], []) for s in range(batch)]
    logits = raw.expand(batch, -1)
    counts = Counter(r.token_id for _ in range(steps) for r in sample_batch(logits, rows))
    assert set(counts) == set(places)
    for token in places:
        assert counts[token] / (batch * steps) == pytest.approx(float(expected[token]), abs=0.02)


def test_truncation_floor_matches_a_full_sort() -> None:
    # Rows settled in each tier: a peaked row (nucleus in the top 256), a flatter one
    # (top 4096), a nearly flat one (the whole vocabulary), and top_k with top_p.
    vocab = 20000
    gen = torch.Generator().manual_seed(7)
    probs = torch.softmax(
        torch.randn(4, vocab, generator=gen) * torch.tensor([[6.0], [2.5], [0.05], [1.0]]), dim=-1
    )
    configs: list[dict[str, Any]] = [
        {"top_p": 0.9},
        {"top_p": 0.9},
        {"top_p": 0.5},
        {"top_k": 300, "top_p": 0.6},
    ]
    rows = [SampleRequest(SamplingParams(**c), None, [], []) for c in configs]
    floor = _truncation_floor(probs, rows)
    for row, config, got in zip(probs, configs, floor.tolist(), strict=True):
        ordered = torch.sort(row, descending=True).values
        top_k = config.get("top_k", vocab)
        ordered = ordered[:top_k]
        mass = float(ordered.sum()) if top_k < vocab else 1.0
        before = torch.cumsum(ordered, dim=0) - ordered
        keep = int((before < config["top_p"] * mass).sum())
        assert got == pytest.approx(float(ordered[keep - 1]), rel=1e-6)
        assert 1 <= keep < top_k
