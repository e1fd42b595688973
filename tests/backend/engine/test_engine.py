"""The engine front and step loop, end to end with the real SmolLM2-135M model (CPU, fp32).

pytest-asyncio is not used: every test drives its coroutine with `asyncio.run`, and each
request's stream binds to the loop running when `add_request` is called.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from backend.attention import AttentionMetadata
from backend.engine import Engine, EngineConfig, RequestRejected
from backend.loading.weights import LoadedModel, load_model
from backend.request import Delta, RequestStream
from backend.sampling_params import SamplingParams

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"
REF_TOKENS = 20
LONG = 500  # max_tokens of requests that are aborted long before they could finish


@dataclass(frozen=True)
class Reference:
    prompt_ids: list[int]
    deltas: list[Delta]
    tokens: list[int]
    text: str
    offsets: list[int]  # offsets[i]: len(decode(tokens[:i]))


@pytest.fixture(scope="module")
def loaded(smollm2_gguf: Path) -> LoadedModel:
    return load_model(smollm2_gguf)


@pytest.fixture(scope="module")
def engine(loaded: LoadedModel) -> Iterator[Engine]:
    eng = Engine(loaded)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def small_engine(loaded: LoadedModel) -> Iterator[Engine]:
    eng = Engine(loaded, EngineConfig(max_model_len=64))
    yield eng
    eng.shutdown()


async def _consume(stream: RequestStream) -> list[Delta]:
    return [d async for d in stream]


def _generate(engine: Engine, prompt: str | list[int], params: SamplingParams) -> list[Delta]:
    async def go() -> list[Delta]:
        return await _consume(engine.add_request(prompt, params))

    return asyncio.run(go())


def _tokens(deltas: list[Delta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def _text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def _greedy(max_tokens: int, **kwargs: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kwargs)  # type: ignore[arg-type]


def _reject(engine: Engine, prompt: str | list[int], params: SamplingParams) -> RequestRejected:
    async def go() -> RequestRejected:
        with pytest.raises(RequestRejected) as info:
            engine.add_request(prompt, params).abort()  # abort: only reached on a failure
        return info.value

    return asyncio.run(go())


def _manual_greedy(loaded: LoadedModel, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy decoding written out by hand: the whole sequence is recomputed from scratch
    each step in a fresh cache, so neither paging nor KV reuse is involved (no EOS check)."""
    model = loaded.model
    device = model.embed_tokens.weight.device
    dtype = model.embed_tokens.weight.dtype
    ids = list(prompt_ids)
    with torch.inference_mode():
        for _ in range(n):
            kv = model.allocate_kv_cache(-(-len(ids) // 16), 16, dtype, device)
            meta = AttentionMetadata.single_prefill(len(ids), 16, device)
            hidden = model(torch.tensor(ids, device=device), torch.arange(len(ids)), meta, kv)
            ids.append(int(torch.argmax(model.compute_logits(hidden[-1:])[0])))
    return ids[len(prompt_ids) :]


@pytest.fixture(scope="module")
def base(engine: Engine, loaded: LoadedModel) -> Reference:
    """A first greedy run through the engine: PROMPT, REF_TOKENS tokens, EOS ignored."""
    tok = loaded.tokenizer
    prompt_ids = tok.encode(PROMPT, add_special_tokens=True)
    deltas = _generate(engine, prompt_ids, _greedy(REF_TOKENS, ignore_eos=True))
    tokens = _tokens(deltas)
    offsets = [len(tok.decode(tokens[:i])) for i in range(len(tokens) + 1)]
    text = _text(deltas)
    assert text == tok.decode(tokens)
    # The tests below cut the text at token boundaries: make sure decoding is additive.
    assert all(text.startswith(tok.decode(tokens[:i])) for i in range(len(tokens)))
    return Reference(prompt_ids, deltas, tokens, text, offsets)


def _expected_stop(base: Reference, stop: str) -> tuple[str, list[int]]:
    """What a greedy run with `stop` must return: the text before it, and the tokens up to the
    one that completes it."""
    at = base.text.find(stop)
    assert at >= 0
    last = next(j for j in range(len(base.tokens)) if base.offsets[j + 1] >= at + len(stop))
    return base.text[:at], base.tokens[: last + 1]


# ---- (a) greedy = a hand-written loop over the model --------------------------------------


def test_greedy_matches_manual_decode_loop(base: Reference, loaded: LoadedModel) -> None:
    assert base.tokens == _manual_greedy(loaded, base.prompt_ids, REF_TOKENS)
    assert len(base.text.strip()) > 20  # the model wrote something
    # One token per delta, counted, with only the last one finished.
    assert [d.token_ids for d in base.deltas] == [[t] for t in base.tokens]
    assert [d.completion_tokens for d in base.deltas] == list(range(1, REF_TOKENS + 1))
    assert {d.prompt_tokens for d in base.deltas} == {len(base.prompt_ids)}
    assert [d.finish_reason for d in base.deltas] == [None] * (REF_TOKENS - 1) + ["length"]
    assert len({d.request_id for d in base.deltas}) == 1


# ---- (b) max_tokens -----------------------------------------------------------------------


def test_max_tokens_ends_with_length(engine: Engine, base: Reference, loaded: LoadedModel) -> None:
    assert not set(base.tokens[:3]) & loaded.tokenizer.eos_token_ids
    deltas = _generate(engine, PROMPT, _greedy(3))  # a string prompt this time
    assert _tokens(deltas) == base.tokens[:3]
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].completion_tokens == 3
    assert deltas[-1].prompt_tokens == len(base.prompt_ids)
    assert _text(deltas) == loaded.tokenizer.decode(base.tokens[:3])


# ---- (c) stop strings and stop tokens -------------------------------------------------------


def test_stop_string_spanning_tokens(engine: Engine, base: Reference) -> None:
    # A stop string that starts inside one token and ends inside a later one.
    for i in range(3, REF_TOKENS - 2):
        start, end = base.offsets[i] + 1, base.offsets[i + 1] + 1
        stop = base.text[start:end]
        if base.offsets[i + 1] - base.offsets[i] >= 2 and base.text.find(stop) == start:
            break
    else:
        pytest.fail(f"no usable stop string in {base.text!r}")
    want_text, want_tokens = _expected_stop(base, stop)
    deltas = _generate(engine, base.prompt_ids, _greedy(REF_TOKENS, stop=["@@never@@", stop]))
    assert deltas[-1].finish_reason == "stop"
    assert _text(deltas) == want_text
    assert stop not in _text(deltas)
    assert _tokens(deltas) == want_tokens
    assert deltas[-1].completion_tokens == len(want_tokens)


def test_stop_string_at_the_very_start(engine: Engine, base: Reference) -> None:
    stop = base.text[:3]
    _, want_tokens = _expected_stop(base, stop)
    deltas = _generate(engine, base.prompt_ids, _greedy(REF_TOKENS, stop=[stop]))
    assert deltas[-1].finish_reason == "stop"
    assert _text(deltas) == ""
    assert _tokens(deltas) == want_tokens


def test_stop_token_id_releases_held_partial_stop(
    engine: Engine, base: Reference, loaded: LoadedModel
) -> None:
    k = next(i for i in range(4, REF_TOKENS) if base.tokens.index(base.tokens[i]) == i)
    before = loaded.tokenizer.decode(base.tokens[:k])
    tail = before[-3:]
    # The text so far ends in what could be the start of a stop string: it is held back,
    # then sent when the stop token ends the request. The stop token's own text is not sent.
    params = _greedy(REF_TOKENS, stop=[tail + "\x00"], stop_token_ids=[base.tokens[k]])
    deltas = _generate(engine, base.prompt_ids, params)
    assert deltas[-1].finish_reason == "stop"
    assert _tokens(deltas) == base.tokens[: k + 1]
    assert _text(deltas) == before
    assert deltas[-1].text.endswith(tail)


def test_length_releases_held_partial_stop(
    engine: Engine, base: Reference, loaded: LoadedModel
) -> None:
    before = loaded.tokenizer.decode(base.tokens[:5])
    tail = before[-2:]
    deltas = _generate(engine, base.prompt_ids, _greedy(5, stop=[tail + "\x00"], ignore_eos=True))
    assert deltas[-1].finish_reason == "length"
    assert _tokens(deltas) == base.tokens[:5]
    assert _text(deltas) == before
    assert not _text(deltas[:-1]).endswith(tail)
    assert deltas[-1].text.endswith(tail)


# ---- (d) seeded sampling ------------------------------------------------------------------


def test_seeded_sampling_reproduces(engine: Engine) -> None:
    def run(seed: int) -> list[int]:
        params = SamplingParams(max_tokens=8, temperature=1.0, seed=seed, ignore_eos=True)
        return _tokens(_generate(engine, "Once upon a time", params))

    first = run(1234)
    assert len(first) == 8
    assert run(1234) == first
    assert run(4321) != first


# ---- (e) streaming text -------------------------------------------------------------------


def test_stream_concatenates_to_decode_with_split_characters(
    engine: Engine, loaded: LoadedModel
) -> None:
    tok = loaded.tokenizer
    messages = [{"role": "user", "content": "Say 日本語 🙂 three times."}]
    prompt = tok.encode(tok.apply_chat_template(messages))
    deltas = _generate(engine, prompt, _greedy(16))
    ids = _tokens(deltas)
    text = _text(deltas)
    assert text == tok.decode(ids)
    assert any(ord(c) > 127 for c in text), text
    # Some characters span several tokens: those deltas carry a token and no text, and no
    # delta before the last ever holds a broken character.
    assert any(d.token_ids and not d.text for d in deltas[:-1])
    assert "\ufffd" not in _text(deltas[:-1])


# ---- (f) abort ----------------------------------------------------------------------------


def test_engine_abort_ends_running_request(engine: Engine, base: Reference) -> None:
    async def go() -> tuple[list[Delta], list[Delta], int]:
        stream = engine.add_request(base.prompt_ids, _greedy(LONG, ignore_eos=True))
        try:
            head = [await anext(stream), await anext(stream)]
            engine.abort(stream.request_id)
            rest = await _consume(stream)
        finally:
            stream.abort()
        return head, rest, engine.num_unfinished

    head, rest, unfinished = asyncio.run(go())
    assert [d.finish_reason for d in head] == [None, None]
    assert rest[-1].finish_reason == "abort"
    assert rest[-1].token_ids == []
    assert all(d.finish_reason is None for d in rest[:-1])
    n = len(_tokens(head + rest))
    assert 2 <= n < LONG
    assert rest[-1].completion_tokens == n
    assert _tokens(head + rest)[:REF_TOKENS] == base.tokens[:n]
    assert unfinished == 0  # the abort delta is sent after the request is dropped
    # The engine goes on serving, and aborting unknown or finished requests is harmless.
    engine.abort("no-such-request")
    engine.abort(rest[-1].request_id)
    deltas = _generate(engine, base.prompt_ids, _greedy(3))
    assert _tokens(deltas) == base.tokens[:3]
    assert deltas[-1].finish_reason == "length"
    assert engine.num_unfinished == 0


def test_stream_abort_stops_iteration_and_frees_request(engine: Engine, base: Reference) -> None:
    async def go() -> tuple[list[Delta], list[Delta]]:
        stream = engine.add_request(base.prompt_ids, _greedy(LONG, ignore_eos=True))
        head = [await anext(stream), await anext(stream)]
        stream.abort()
        stream.abort()  # idempotent
        rest = await _consume(stream)  # the stream ends at once
        # The engine is serving requests one at a time, first come first served: the next
        # request completes only once the aborted one is gone.
        after = await _consume(engine.add_request(base.prompt_ids, _greedy(3)))
        return head + rest, after

    got, after = asyncio.run(go())
    assert len(got) == 2
    assert _tokens(after) == base.tokens[:3]
    assert after[-1].finish_reason == "length"
    assert engine.num_unfinished == 0


def test_abort_waiting_request(engine: Engine, base: Reference) -> None:
    async def go() -> tuple[list[Delta], list[Delta]]:
        first = engine.add_request(base.prompt_ids, _greedy(LONG, ignore_eos=True))
        second = engine.add_request(base.prompt_ids, _greedy(LONG, ignore_eos=True))
        try:
            head = [await anext(first)]
            engine.abort(second.request_id)
            second_deltas = await _consume(second)
            engine.abort(first.request_id)
            first_deltas = head + await _consume(first)
        finally:
            first.abort()
            second.abort()
        return first_deltas, second_deltas

    first_deltas, second_deltas = asyncio.run(go())
    assert second_deltas[-1].finish_reason == "abort"
    assert len(_tokens(second_deltas)) < LONG
    assert first_deltas[-1].finish_reason == "abort"
    assert len(_tokens(first_deltas)) < LONG
    assert engine.num_unfinished == 0


def test_failed_request_does_not_stop_the_engine(
    engine: Engine, base: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inject a fault into one step (as a CUDA error or a bad kernel would raise): the
    # request must end with that error, and the engine must go on serving.
    def broken_sample(*args: object, **kwargs: object) -> list[object]:
        raise RuntimeError("injected fault")

    monkeypatch.setattr("backend.engine.engine.sample_batch", broken_sample)
    with pytest.raises(RuntimeError, match="injected fault"):
        _generate(engine, base.prompt_ids, _greedy(3))
    assert engine.num_unfinished == 0
    monkeypatch.undo()
    deltas = _generate(engine, base.prompt_ids, _greedy(3))
    assert _tokens(deltas) == base.tokens[:3]
    assert deltas[-1].finish_reason == "length"


# ---- (g) several requests at once -----------------------------------------------------------


def test_concurrent_requests_match_solo_runs(engine: Engine) -> None:
    prompts = ["The capital of France is", "1, 2, 3, 4,", "def add(a, b):"]
    solo = [_generate(engine, p, _greedy(5)) for p in prompts]

    async def go() -> list[list[Delta]]:
        streams = [
            engine.add_request(p, _greedy(5), request_id=f"multi-{i}")
            for i, p in enumerate(prompts)
        ]
        # The id of a request still in flight cannot be reused.
        with pytest.raises(RequestRejected, match="already in use"):
            engine.add_request("x", _greedy(1), request_id="multi-1")
        assert engine.num_unfinished == len(prompts)
        return list(await asyncio.gather(*(_consume(s) for s in streams)))

    together = asyncio.run(go())
    for i, (alone, batched) in enumerate(zip(solo, together, strict=True)):
        assert {d.request_id for d in batched} == {f"multi-{i}"}
        assert _tokens(batched) == _tokens(alone)
        assert _text(batched) == _text(alone)
        assert batched[-1].finish_reason == alone[-1].finish_reason
        assert sum(d.finish_reason is not None for d in batched) == 1
    assert engine.num_unfinished == 0
    # Finished ids are free again.
    again = _generate(engine, prompts[0], SamplingParams(max_tokens=1, temperature=0.0))
    assert _tokens(again) == _tokens(solo[0])[:1]


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
    err = _reject(small_engine, _ids(loaded, length), params)
    assert err.code == "context_length_exceeded"
    assert "64" in str(err)
    assert small_engine.num_unfinished == 0


def test_request_that_exactly_fills_the_context(small_engine: Engine, loaded: LoadedModel) -> None:
    deltas = _generate(small_engine, _ids(loaded, 60), _greedy(4, ignore_eos=True))
    assert deltas[-1].finish_reason == "length"
    assert len(_tokens(deltas)) == 4
    # Without max_tokens the request gets whatever room the context leaves: here one token.
    deltas = _generate(
        small_engine, _ids(loaded, 63), SamplingParams(temperature=0.0, ignore_eos=True)
    )
    assert len(_tokens(deltas)) == 1
    assert deltas[-1].finish_reason == "length"


def test_max_model_len_is_capped_by_the_model(loaded: LoadedModel) -> None:
    eng = Engine(loaded, EngineConfig(max_model_len=10**9))
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
    err = _reject(engine, prompt, _greedy(2))  # type: ignore[arg-type]
    assert err.code == "invalid_prompt"
    assert engine.num_unfinished == 0


def test_unusable_seed_is_rejected(engine: Engine, base: Reference) -> None:
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(max_tokens=1, temperature=1.0, seed=2**64)
    # The whole signed 64-bit range is usable (torch takes seeds as unsigned).
    for seed in (-(2**63), 2**63 - 1):
        deltas = _generate(engine, base.prompt_ids, SamplingParams(max_tokens=2, seed=seed))
        assert deltas[-1].finish_reason in ("length", "stop")


# ---- (i) shutdown -------------------------------------------------------------------------


def test_shutdown_fails_in_flight_requests_and_refuses_new_ones(
    loaded: LoadedModel, base: Reference
) -> None:
    eng = Engine(loaded)

    async def go() -> None:
        stream = eng.add_request(base.prompt_ids, _greedy(LONG, ignore_eos=True))
        assert (await anext(stream)).finish_reason is None
        eng.shutdown()  # blocks until the step loop has exited
        with pytest.raises(RuntimeError, match="shut down"):
            async for delta in stream:
                assert delta.finish_reason is None
        assert eng.num_unfinished == 0
        with pytest.raises(RuntimeError, match="shut down"):
            eng.add_request(base.prompt_ids, _greedy(1))

    try:
        asyncio.run(go())
    finally:
        eng.shutdown()  # a second shutdown is harmless


def test_add_request_after_shutdown_raises(loaded: LoadedModel) -> None:
    eng = Engine(loaded)
    eng.shutdown()

    async def go() -> None:
        with pytest.raises(RuntimeError, match="shut down"):
            eng.add_request("hello", _greedy(1))

    asyncio.run(go())
    assert eng.num_unfinished == 0
