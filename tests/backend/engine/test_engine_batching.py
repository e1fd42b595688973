"""Continuous batching with the real model: batched output equals one-at-a-time output,
prefix caching, preemption under a tiny KV pool, seeded sampling inside a busy batch,
aborts freeing every block (CPU, fp32)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from backend.engine import Engine
from backend.loading.weights import LoadedModel
from backend.sampling_params import SamplingParams
from tests.backend.conftest import small_kv_config

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain what a hash table is in one paragraph.",
    "List five fruits.",
    "Why is the sky blue? " * 12,  # a longer prompt, prefilled in several chunks
    "Translate 'thank you' into German.",
    "What is 12 times 12?",
    "Describe a cat in three words.",
]
SYSTEM = (
    "You are a meticulous assistant for a library. You answer questions about books, "
    "authors and reading habits, you cite the shelf where a book can be found, and you "
    "never invent titles. "
) * 6


def _engine(loaded: LoadedModel, **kwargs: object) -> Engine:
    return Engine(loaded, small_kv_config(**kwargs))


@pytest.fixture(scope="module")
def engine(loaded: LoadedModel) -> Iterator[Engine]:
    # A small token budget so long prompts are chunked and mixed with running decodes.
    eng = _engine(loaded, max_num_batched_tokens=64, max_num_seqs=8)
    yield eng
    eng.shutdown()


def chat_ids(loaded: LoadedModel, question: str, system: str | None = None) -> list[int]:
    messages = [{"role": "user", "content": question}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    tok = loaded.tokenizer
    return tok.encode(tok.apply_chat_template(messages))


async def _run(engine: Engine, ids: list[int], params: SamplingParams) -> list[int]:
    return [t async for d in engine.add_request(ids, params) for t in d.token_ids]


def run_one_at_a_time(
    engine: Engine, prompts: list[list[int]], params: SamplingParams
) -> list[list[int]]:
    return [asyncio.run(_run(engine, p, params)) for p in prompts]


def run_together(
    engine: Engine, prompts: list[list[int]], params: list[SamplingParams]
) -> list[list[int]]:
    async def go() -> list[list[int]]:
        return list(
            await asyncio.gather(
                *(_run(engine, p, q) for p, q in zip(prompts, params, strict=True))
            )
        )

    return asyncio.run(go())


GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def solo(engine: Engine, loaded: LoadedModel) -> list[list[int]]:
    return run_one_at_a_time(engine, [chat_ids(loaded, q) for q in QUESTIONS], GREEDY)


def test_batched_greedy_equals_one_at_a_time(
    engine: Engine, loaded: LoadedModel, solo: list[list[int]]
) -> None:
    prompts = [chat_ids(loaded, q) for q in QUESTIONS]
    assert max(len(p) for p in prompts) > 64  # at least one prompt is chunked
    together = run_together(engine, prompts, [GREEDY] * len(prompts))
    assert together == solo
    assert engine.blocks.usage == 0.0  # everything finished and freed


def test_prefix_cache_hit_gives_identical_output_and_skips_prefill(loaded: LoadedModel) -> None:
    eng = _engine(loaded)
    try:
        first = chat_ids(loaded, QUESTIONS[0], SYSTEM)
        second = chat_ids(loaded, QUESTIONS[3], SYSTEM)
        cold = asyncio.run(_run(eng, first, GREEDY))
        assert eng.blocks.prefix_cache_hits == 0
        again = asyncio.run(_run(eng, first, GREEDY))
        assert again == cold
        bs = eng.config.block_size
        hits = eng.blocks.prefix_cache_hits
        # Every full block but the last token's (it needs logits). The short answer never
        # filled that block, so it was never cached (only full blocks are).
        assert hits == (len(first) - 1) // bs * bs
        shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
        assert shared % bs  # the prompts part mid-block
        second_out = asyncio.run(_run(eng, second, GREEDY))
        # The shared system prompt: its full blocks, and the slots before the divergence
        # in its block copied from first's
        assert eng.blocks.prefix_cache_hits - hits == shared
        assert eng.blocks.prefix_cache_queries == 2 * len(first) + len(second)
    finally:
        eng.shutdown()
    uncached = _engine(loaded, prefix_caching=False)
    try:
        assert asyncio.run(_run(uncached, second, GREEDY)) == second_out
    finally:
        uncached.shutdown()


def test_preemption_under_a_tiny_kv_pool_keeps_outputs_correct(
    loaded: LoadedModel, engine: Engine
) -> None:
    prompts = [chat_ids(loaded, q) for q in QUESTIONS[:4]]
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    expected = run_one_at_a_time(engine, prompts, params)
    # 12 blocks of 16 tokens: two of these requests fit at once, four never do.
    tiny = _engine(loaded, num_kv_blocks=12, block_size=16, prefix_caching=False)
    try:
        assert run_together(tiny, prompts, [params] * 4) == expected
        assert tiny.scheduler.num_preemptions > 0
        assert tiny.blocks.num_free_blocks == 12
    finally:
        tiny.shutdown()


def test_seeded_sampling_is_the_same_alone_and_in_a_busy_batch(
    engine: Engine, loaded: LoadedModel
) -> None:
    seeded = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=4242)
    prompt = chat_ids(loaded, QUESTIONS[1])
    alone = asyncio.run(_run(engine, prompt, seeded))
    others = [
        SamplingParams(max_tokens=30, temperature=1.0),  # unseeded
        SamplingParams(max_tokens=12, temperature=0.0),
        SamplingParams(max_tokens=20, temperature=0.7, top_k=5, seed=1),
        SamplingParams(max_tokens=28, temperature=1.2, min_p=0.1, presence_penalty=0.5),
    ]
    prompts = [prompt] + [chat_ids(loaded, q) for q in QUESTIONS[4:8]]
    busy = run_together(engine, prompts, [seeded, *others])
    assert busy[0] == alone


def test_abort_frees_every_block(loaded: LoadedModel) -> None:
    eng = _engine(loaded, num_kv_blocks=64)
    try:

        async def go() -> None:
            params = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
            streams = [eng.add_request(chat_ids(loaded, q), params) for q in QUESTIONS[:4]]
            for s in streams:
                await anext(s)  # all four are running
            assert eng.blocks.usage > 0
            for s in streams:
                eng.abort(s.request_id)
            for s in streams:  # each ends with an "abort" delta, sent after its blocks are freed
                assert [d.finish_reason async for d in s][-1] == "abort"

        asyncio.run(go())
        assert eng.blocks.usage == 0.0
        assert eng.blocks.num_free_blocks == 64
        assert not eng.scheduler.has_unfinished
    finally:
        eng.shutdown()


def test_n_choices_share_the_prompt_kv(loaded: LoadedModel) -> None:
    eng = _engine(loaded)
    try:
        prompt = chat_ids(loaded, QUESTIONS[2], SYSTEM)

        async def go() -> list[list[int]]:
            first = eng.add_request(prompt, GREEDY)
            others = [eng.add_request(prompt, GREEDY, same_prompt_as=first) for _ in range(2)]
            outs = []
            for stream in (first, *others):
                outs.append([t async for d in stream for t in d.token_ids])
            return outs

        outs = asyncio.run(go())
        assert outs[0] == outs[1] == outs[2]  # greedy: the same answer, from shared KV
        bs = eng.config.block_size
        # Only choice 0 computed the prompt; the others hit every full block of it.
        assert eng.blocks.prefix_cache_hits == 2 * ((len(prompt) - 1) // bs * bs)
    finally:
        eng.shutdown()
