"""SamplingParams: what it accepts, what it refuses (ValueError naming the field), and
what its flags and defaults mean."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from backend.sampling_params import SamplingParams

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"prompt_logprobs": 21}, "prompt_logprobs"),
        ({"prompt_logprobs": -1}, "prompt_logprobs"),
        ({"temperature": 3.0}, "temperature"),
        ({"temperature": 2.0001}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": float("nan")}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["ok", ""]}, "stop"),
    ],
)
def test_invalid_params_raise_value_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"max_tokens": 1},
        {"max_tokens": None},
        {"temperature": 0.0},
        {"temperature": 2.0},
        {"top_p": 1.0},
        {"top_p": 1e-9},
        {"top_k": 0},
        {"top_k": 1},
        {"stop": ["a", "\n\n"]},
        {"seed": 0},
    ],
)
def test_boundary_values_are_accepted(kwargs: dict[str, Any]) -> None:
    SamplingParams(**kwargs)


def test_greedy_flag_and_generator() -> None:
    assert SamplingParams(temperature=0.0).greedy
    assert SamplingParams(temperature=0.0).make_generator(CPU) is None
    assert not SamplingParams(temperature=1e-3).greedy
    gen = SamplingParams(temperature=1e-3, seed=3).make_generator(CPU)
    assert isinstance(gen, torch.Generator)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_p": -0.1}, "min_p"),
        ({"min_p": 1.01}, "min_p"),
        ({"min_p": float("nan")}, "min_p"),
        ({"presence_penalty": 2.1}, "presence_penalty"),
        ({"presence_penalty": -2.1}, "presence_penalty"),
        ({"presence_penalty": float("nan")}, "presence_penalty"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"frequency_penalty": -3.0}, "frequency_penalty"),
        ({"frequency_penalty": float("nan")}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty"),
        ({"logprobs": -1}, "logprobs"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": 2.0}, "logprobs"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias"),
        ({"logit_bias": {5: float("nan")}}, "logit_bias"),
        ({"logit_bias": {5: "high"}}, "logit_bias"),
        ({"logit_bias": [(5, 1.0)]}, "logit_bias"),
        ({"n": 0}, "n must"),
        ({"n": -2}, "n must"),
        ({"n": 1.5}, "n must"),
    ],
)
def test_invalid_new_params_raise_value_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_p": 0.0},
        {"min_p": 1.0},
        {"presence_penalty": -2.0, "frequency_penalty": 2.0},
        {"presence_penalty": 2.0, "frequency_penalty": -2.0},
        {"repetition_penalty": 0.01},
        {"repetition_penalty": 10.0},
        {"logprobs": None},
        {"logprobs": 0},
        {"logprobs": 20},
        {"logit_bias": {}},
        {"logit_bias": {0: -100, 7: 100.0}},
        {"n": 1},
        {"n": 16},
    ],
)
def test_new_boundary_values_are_accepted(kwargs: dict[str, Any]) -> None:
    SamplingParams(**kwargs)


def test_defaults_change_nothing() -> None:
    params = SamplingParams()
    assert (params.min_p, params.presence_penalty, params.frequency_penalty) == (0.0, 0.0, 0.0)
    assert (params.repetition_penalty, params.logprobs, params.logit_bias, params.n) == (
        1.0,
        None,
        None,
        1,
    )
    assert not params.adjusts_logits
    assert not params.needs_history


@pytest.mark.parametrize(
    ("kwargs", "history", "adjusts"),
    [
        ({"repetition_penalty": 1.1}, True, True),
        ({"presence_penalty": -0.5}, True, True),
        ({"frequency_penalty": 0.5}, True, True),
        ({"logit_bias": {1: 2.0}}, False, True),
        ({"logit_bias": {}}, False, False),
    ],
)
def test_history_and_adjustment_flags(kwargs: dict[str, Any], history: bool, adjusts: bool) -> None:
    params = SamplingParams(**kwargs)
    assert params.needs_history is history
    assert params.adjusts_logits is adjusts


def test_logit_bias_values_are_clamped() -> None:
    params = SamplingParams(logit_bias={1: 1e6, 2: -500, 3: 0.5, 4: float("inf")})
    assert params.logit_bias == {1: 100.0, 2: -100.0, 3: 0.5, 4: 100.0}
