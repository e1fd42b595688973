"""Next-token selection, one row: greedy, temperature, top-k, top-p (parameters checked in
test_sampling_params.py)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import torch

from backend.sampler import sample
from backend.sampling_params import SamplingParams

CPU = torch.device("cpu")
# A small, known distribution: softmax = [0.563, 0.207, 0.126, 0.076, 0.028].
LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
DRAWS = 20_000


def _softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    exps = [math.exp(x - top) for x in xs]
    total = sum(exps)
    return [e / total for e in exps]


def _draw(logits: torch.Tensor, params: SamplingParams, n: int) -> list[int]:
    gen = params.make_generator(CPU)
    return [sample(logits, params, gen) for _ in range(n)]


# ---- greedy and truncation ---------------------------------------------------------------


@pytest.mark.parametrize("extra", [{}, {"top_k": 3}, {"top_p": 0.5}, {"seed": 1}])
def test_greedy_picks_argmax(extra: dict[str, Any]) -> None:
    params = SamplingParams(temperature=0.0, **extra)
    torch.manual_seed(0)
    for _ in range(20):
        logits = torch.randn(1000)
        assert sample(logits, params, None) == int(torch.argmax(logits))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_top_k_1_always_returns_argmax(temperature: float) -> None:
    params = SamplingParams(temperature=temperature, top_k=1, seed=123)
    gen = params.make_generator(CPU)
    torch.manual_seed(1)
    for _ in range(50):
        logits = torch.randn(500) * 0.1  # nearly flat: untruncated sampling would wander
        want = int(torch.argmax(logits))
        assert all(sample(logits, params, gen) == want for _ in range(5))


def test_tiny_top_p_keeps_only_the_top_token() -> None:
    params = SamplingParams(temperature=1.0, top_p=1e-6, seed=5)
    flat = torch.tensor([0.30, 0.29, 0.31, 0.28])  # top token has barely more mass
    assert set(_draw(flat, params, 500)) == {2}


def test_top_k_larger_than_vocab_is_no_truncation() -> None:
    params = SamplingParams(temperature=1.0, top_k=50, seed=9)
    assert set(_draw(torch.zeros(3), params, 300)) == {0, 1, 2}


# ---- seeding -----------------------------------------------------------------------------


def test_seeded_generator_reproduces_and_seeds_differ() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))

    def run(seed: int) -> list[int]:
        return _draw(logits, SamplingParams(temperature=1.0, seed=seed), 100)

    first = run(42)
    assert run(42) == first
    assert run(43) != first
    assert run(44) != first
    assert len(set(first)) > 5  # really sampling, not collapsing to one token


def test_unseeded_generators_differ() -> None:
    logits = torch.zeros(1000)
    params = SamplingParams(temperature=1.0)
    assert _draw(logits, params, 20) != _draw(logits, params, 20)


# ---- distributions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({"temperature": 1.0}, _softmax([2.0, 1.0, 0.5, 0.0, -1.0]), id="t1"),
        pytest.param({"temperature": 0.5}, _softmax([4.0, 2.0, 1.0, 0.0, -2.0]), id="t0.5"),
        pytest.param(
            {"temperature": 1.0, "top_k": 2}, _softmax([2.0, 1.0]) + [0.0] * 3, id="top_k2"
        ),
        # Mass of the sorted prefix before each token: 0, .563, .770 -> the first two stay.
        pytest.param(
            {"temperature": 1.0, "top_p": 0.7}, _softmax([2.0, 1.0]) + [0.0] * 3, id="top_p0.7"
        ),
    ],
)
def test_empirical_frequencies_match_the_distribution(
    kwargs: dict[str, Any], expected: list[float]
) -> None:
    draws = _draw(LOGITS, SamplingParams(seed=2024, **kwargs), DRAWS)
    counts = Counter(draws)
    allowed = {i for i, p in enumerate(expected) if p > 0}
    assert set(counts) <= allowed, f"sampled outside the kept tokens: {sorted(counts)}"
    for i, p in enumerate(expected):
        assert counts[i] / DRAWS == pytest.approx(p, abs=0.02), (i, counts)


def test_top_k_2_only_ever_returns_the_two_best() -> None:
    logits = torch.tensor([0.1, 3.0, -2.0, 2.9, 0.0, 1.0])
    draws = _draw(logits, SamplingParams(temperature=2.0, top_k=2, seed=11), 3000)
    assert set(draws) == {1, 3}


def test_tiny_positive_temperature_behaves_like_greedy() -> None:
    # Dividing by 1e-40 would overflow float32 to inf and NaN probabilities.
    params = SamplingParams(temperature=1e-40, seed=0)
    gen = params.make_generator(CPU)
    assert [sample(LOGITS * 10, params, gen) for _ in range(10)] == [0] * 10
