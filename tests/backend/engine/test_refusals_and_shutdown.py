"""Requests the engine refuses (context too long, bad prompts, unusable seeds, a
max_model_len past the model's) and its shutdown: requests in flight fail, new ones are
refused. End to end with the real SmolLM2-135M model."""

from __future__ import annotations

import asyncio

import pytest

from backend.engine import Engine
from backend.loading.weights import LoadedModel
from backend.sampling_params import SamplingParams
from tests.backend.conftest import small_kv_config
from tests.backend.engine.conftest import (
    LONG,
    Reference,
    generate,
    greedy,
    reject,
    tokens_of,
)

pytestmark = pytest.mark.slow


# ---- (h) rejected requests ------------------------------------------------------------------


def _ids(loaded: LoadedModel, n: int) -> list[int]:
    ids = loaded.tokenizer.encode("one two three four five six seven eight nine ten " * 20)
    assert len(ids) >= n
    return ids[:n]


@pytest.mark.parametrize(
    ("length", "max_tokens"), [(64, None), (64, 1), (100, None), (100, 1), (60, 5), (1, 64)]
)
def test_context_length_exceeded(
    small_engine: Engine, loaded: LoadedModel, length: int, max_tokens: int | None
) -> None:
    assert small_engine.max_model_len == 64
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    err = reject(small_engine, _ids(loaded, length), params)
    assert err.code == "context_length_exceeded"
    assert "64" in str(err)
    assert small_engine.num_unfinished == 0


def test_request_that_exactly_fills_the_context(small_engine: Engine, loaded: LoadedModel) -> None:
    deltas = generate(small_engine, _ids(loaded, 60), greedy(4, ignore_eos=True))
    assert deltas[-1].finish_reason == "length"
    assert len(tokens_of(deltas)) == 4
    # Without max_tokens the request gets whatever room the context leaves: here one token.
    deltas = generate(
        small_engine, _ids(loaded, 63), SamplingParams(temperature=0.0, ignore_eos=True)
    )
    assert len(tokens_of(deltas)) == 1
    assert deltas[-1].finish_reason == "length"


def test_max_model_len_is_capped_by_the_model(loaded: LoadedModel) -> None:
    ctx = loaded.config.max_position_embeddings
    eng = Engine(loaded, small_kv_config(max_model_len=10**9, num_kv_blocks=ctx // 16 + 8))
    try:
        assert eng.max_model_len == loaded.config.max_position_embeddings
    finally:
        eng.shutdown()


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param([], id="empty-ids"),
        pytest.param("", id="empty-string"),
        pytest.param([-1], id="negative-id"),
        pytest.param([1, 2, 49152], id="id-equal-to-vocab"),
        pytest.param([10**9], id="huge-id"),
    ],
)
def test_invalid_prompt_rejected(engine: Engine, loaded: LoadedModel, prompt: object) -> None:
    assert loaded.tokenizer.vocab_size == 49152
    err = reject(engine, prompt, greedy(2))  # type: ignore[arg-type]
    assert err.code == "invalid_prompt"
    assert engine.num_unfinished == 0


def test_unusable_seed_is_rejected(engine: Engine, base: Reference) -> None:
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(max_tokens=1, temperature=1.0, seed=2**64)
    # The whole signed 64-bit range is usable (torch takes seeds as unsigned).
    for seed in (-(2**63), 2**63 - 1):
        deltas = generate(engine, base.prompt_ids, SamplingParams(max_tokens=2, seed=seed))
        assert deltas[-1].finish_reason in ("length", "stop")


# ---- (i) shutdown -------------------------------------------------------------------------


def test_shutdown_fails_in_flight_requests_and_refuses_new_ones(
    loaded: LoadedModel, base: Reference
) -> None:
    eng = Engine(loaded, small_kv_config())

    async def go() -> None:
        stream = eng.add_request(base.prompt_ids, greedy(LONG, ignore_eos=True))
        assert (await anext(stream)).finish_reason is None
        eng.shutdown()  # blocks until the step loop has exited
        with pytest.raises(RuntimeError, match="shut down"):
            async for delta in stream:
                assert delta.finish_reason is None
        assert eng.num_unfinished == 0
        with pytest.raises(RuntimeError, match="shut down"):
            eng.add_request(base.prompt_ids, greedy(1))

    try:
        asyncio.run(go())
    finally:
        eng.shutdown()  # a second shutdown is harmless


def test_add_request_after_shutdown_raises(loaded: LoadedModel) -> None:
    eng = Engine(loaded, small_kv_config())
    eng.shutdown()

    async def go() -> None:
        with pytest.raises(RuntimeError, match="shut down"):
            eng.add_request("hello", greedy(1))

    asyncio.run(go())
    assert eng.num_unfinished == 0


def test_shutdown_gives_back_the_kv_cache(loaded: LoadedModel) -> None:
    """A stopped engine's cache (gigabytes on a server) is freed at shutdown, not when the
    garbage collector next finds the engine."""
    eng = Engine(loaded, small_kv_config())
    assert eng.runner.kv_cache.numel() > 0
    eng.shutdown()
    assert eng.runner.kv_cache.numel() == 0
