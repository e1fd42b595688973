"""Speculative decoding inside the engine, with the real model (CPU, fp32): greedy output
identical to plain decoding, speculating and plain requests sharing batches, seeded
sampling reproducible, every block freed, counts reported."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from backend.engine import Engine, RequestRejected
from backend.loading.weights import LoadedModel
from backend.request import Delta
from backend.sampling_params import SamplingParams
from backend.speculative import SpeculativeConfig
from tests.backend.conftest import small_kv_config

pytestmark = pytest.mark.slow

PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs every evening at six. He wound the "
    "clockwork, trimmed the wick and polished the great lens until it shone. Ships far out "
    "at sea saw the beam sweep across the water and knew the rocks were near."
)
PROMPTS = [
    f"Repeat this passage exactly:\n\n{PASSAGE}",
    f"Rewrite this passage in the past perfect tense:\n\n{PASSAGE}",
    "Write a short poem about the sea.",
    f"{PASSAGE}\n\nWhat did the keeper polish?",
]


@pytest.fixture(scope="module")
def plain(loaded: LoadedModel) -> Iterator[Engine]:
    eng = Engine(loaded, small_kv_config(max_num_batched_tokens=256))
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def spec(loaded: LoadedModel) -> Iterator[Engine]:
    # Fixed k: what is proposed is fed, so these tests do not depend on timings.
    config = SpeculativeConfig(method="ngram", num_speculative_tokens=6, adaptive_speculation=False)
    eng = Engine(loaded, small_kv_config(max_num_batched_tokens=256, speculative=config))
    yield eng
    eng.shutdown()


def chat_ids(loaded: LoadedModel, text: str) -> list[int]:
    tok = loaded.tokenizer
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))


async def _run(engine: Engine, ids: list[int], params: SamplingParams) -> tuple[list[int], Delta]:
    tokens: list[int] = []
    last = None
    async for d in engine.add_request(ids, params):
        tokens += d.token_ids
        last = d
    assert last is not None
    return tokens, last


def run_all(
    engine: Engine, prompts: list[list[int]], params: list[SamplingParams]
) -> list[tuple[list[int], Delta]]:
    async def go() -> list[tuple[list[int], Delta]]:
        jobs = (_run(engine, p, q) for p, q in zip(prompts, params, strict=True))
        return list(await asyncio.gather(*jobs))

    return asyncio.run(go())


GREEDY = SamplingParams(max_tokens=60, temperature=0.0)


def test_greedy_output_is_identical_with_speculation(
    plain: Engine, spec: Engine, loaded: LoadedModel
) -> None:
    prompts = [chat_ids(loaded, p) for p in PROMPTS]
    expected = [run_all(plain, [p], [GREEDY])[0][0] for p in prompts]
    alone = [run_all(spec, [p], [GREEDY])[0] for p in prompts]
    assert [tokens for tokens, _ in alone] == expected
    # the repeat prompt is where lookup pays: most of its output came from guesses
    repeat = alone[0][1]
    assert repeat.accepted_draft_tokens > len(expected[0]) // 3
    # together, speculating and plain requests in the same batches
    mixed = [
        SamplingParams(max_tokens=60, temperature=0.0, speculative=i % 2 == 0)
        for i in range(len(prompts))
    ]
    together = run_all(spec, prompts, mixed)
    assert [tokens for tokens, _ in together] == expected
    assert together[1][1].accepted_draft_tokens == 0  # opted out: never speculated
    assert spec.blocks.num_free_blocks == spec.blocks.num_blocks  # nothing left in use
    spec.blocks._check()


def test_stop_inside_accepted_guesses_truncates_there(spec: Engine, loaded: LoadedModel) -> None:
    ids = chat_ids(loaded, PROMPTS[0])
    params = SamplingParams(max_tokens=60, temperature=0.0, stop=["polished"])
    tokens, last = run_all(spec, [ids], [params])[0]
    assert last.finish_reason == "stop"
    text = loaded.tokenizer.decode(tokens)
    assert "polished" in text and "lens" not in text.split("polished", 1)[1]


def test_max_tokens_is_exact_when_speculating(spec: Engine, loaded: LoadedModel) -> None:
    ids = chat_ids(loaded, PROMPTS[0])
    for n in (1, 7, 23):
        tokens, last = run_all(spec, [ids], [SamplingParams(max_tokens=n, temperature=0.0)])[0]
        assert len(tokens) == n and last.completion_tokens == n
        assert last.finish_reason == "length"


def test_seeded_sampling_reproduces_with_speculation(spec: Engine, loaded: LoadedModel) -> None:
    ids = chat_ids(loaded, PROMPTS[0])
    params = SamplingParams(max_tokens=40, temperature=0.7, seed=5)
    first = run_all(spec, [ids], [params])[0]
    # again, now inside a busy batch
    others = [chat_ids(loaded, p) for p in PROMPTS[1:]]
    busy = run_all(spec, [ids, *others], [params] + [GREEDY] * len(others))[0]
    assert first[0] == busy[0]


def test_speculation_refused_when_the_server_has_none(plain: Engine, loaded: LoadedModel) -> None:
    async def go() -> None:
        plain.add_request([1, 2, 3], SamplingParams(max_tokens=2, speculative=True))

    with pytest.raises(RequestRejected, match="speculative"):
        asyncio.run(go())


def test_self_draft_keeps_greedy_output_identical(plain: Engine, loaded: LoadedModel) -> None:
    config = SpeculativeConfig(method="self-draft", self_draft_layers=6, num_speculative_tokens=3,
                               adaptive_speculation=False)  # fmt: skip
    eng = Engine(loaded, small_kv_config(max_num_batched_tokens=256, speculative=config))
    try:
        prompts = [chat_ids(loaded, p) for p in PROMPTS[:2]]
        params = SamplingParams(max_tokens=30, temperature=0.0)
        expected = [run_all(plain, [p], [params])[0][0] for p in prompts]
        got = run_all(eng, prompts, [params, params])
        assert [tokens for tokens, _ in got] == expected
        drafted = sum(d.accepted_draft_tokens + d.rejected_draft_tokens for _, d in got)
        assert drafted > 0  # it did guess (fixed k: every decode step)
        assert eng.blocks.num_free_blocks == eng.blocks.num_blocks
        eng.blocks._check()
    finally:
        eng.shutdown()
