"""The engine front and step loop, end to end with the real SmolLM2-135M model (CPU, fp32).

pytest-asyncio is not used: every test drives its coroutine with `asyncio.run`, and each
request's stream binds to the loop running when `add_request` is called.
"""

from __future__ import annotations

import asyncio

import pytest

from backend.engine import Engine, RequestRejected
from backend.loading.weights import LoadedModel
from backend.request import Delta
from backend.sampling_params import SamplingParams
from tests.backend.engine.conftest import (
    LONG,
    PROMPT,
    REF_TOKENS,
    Reference,
    consume,
    generate,
    greedy,
    manual_greedy,
    text_of,
    tokens_of,
)

pytestmark = pytest.mark.slow


def _expected_stop(base: Reference, stop: str) -> tuple[str, list[int]]:
    """What a greedy run with `stop` must return: the text before it, and the tokens up to the
    one that completes it."""
    at = base.text.find(stop)
    assert at >= 0
    last = next(j for j in range(len(base.tokens)) if base.offsets[j + 1] >= at + len(stop))
    return base.text[:at], base.tokens[: last + 1]


# ---- (a) greedy = a hand-written loop over the model --------------------------------------


def test_greedy_matches_manual_decode_loop(base: Reference, loaded: LoadedModel) -> None:
    assert base.tokens == manual_greedy(loaded, base.prompt_ids, REF_TOKENS)
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
    deltas = generate(engine, PROMPT, greedy(3))  # a string prompt this time
    assert tokens_of(deltas) == base.tokens[:3]
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].completion_tokens == 3
    assert deltas[-1].prompt_tokens == len(base.prompt_ids)
    assert text_of(deltas) == loaded.tokenizer.decode(base.tokens[:3])


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
    deltas = generate(engine, base.prompt_ids, greedy(REF_TOKENS, stop=["@@never@@", stop]))
    assert deltas[-1].finish_reason == "stop"
    assert text_of(deltas) == want_text
    assert stop not in text_of(deltas)
    assert tokens_of(deltas) == want_tokens
    assert deltas[-1].completion_tokens == len(want_tokens)


def test_stop_string_at_the_very_start(engine: Engine, base: Reference) -> None:
    stop = base.text[:3]
    _, want_tokens = _expected_stop(base, stop)
    deltas = generate(engine, base.prompt_ids, greedy(REF_TOKENS, stop=[stop]))
    assert deltas[-1].finish_reason == "stop"
    assert text_of(deltas) == ""
    assert tokens_of(deltas) == want_tokens


def test_stop_token_id_releases_held_partial_stop(
    engine: Engine, base: Reference, loaded: LoadedModel
) -> None:
    k = next(i for i in range(4, REF_TOKENS) if base.tokens.index(base.tokens[i]) == i)
    before = loaded.tokenizer.decode(base.tokens[:k])
    tail = before[-3:]
    # The text so far ends in what could be the start of a stop string: it is held back,
    # then sent when the stop token ends the request. The stop token's own text is not sent.
    params = greedy(REF_TOKENS, stop=[tail + "\x00"], stop_token_ids=[base.tokens[k]])
    deltas = generate(engine, base.prompt_ids, params)
    assert deltas[-1].finish_reason == "stop"
    assert tokens_of(deltas) == base.tokens[: k + 1]
    assert text_of(deltas) == before
    assert deltas[-1].text.endswith(tail)


def test_length_releases_held_partial_stop(
    engine: Engine, base: Reference, loaded: LoadedModel
) -> None:
    before = loaded.tokenizer.decode(base.tokens[:5])
    tail = before[-2:]
    deltas = generate(engine, base.prompt_ids, greedy(5, stop=[tail + "\x00"], ignore_eos=True))
    assert deltas[-1].finish_reason == "length"
    assert tokens_of(deltas) == base.tokens[:5]
    assert text_of(deltas) == before
    assert not text_of(deltas[:-1]).endswith(tail)
    assert deltas[-1].text.endswith(tail)


# ---- (d) seeded sampling ------------------------------------------------------------------


def test_seeded_sampling_reproduces(engine: Engine) -> None:
    def run(seed: int) -> list[int]:
        params = SamplingParams(max_tokens=8, temperature=1.0, seed=seed, ignore_eos=True)
        return tokens_of(generate(engine, "Once upon a time", params))

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
    deltas = generate(engine, prompt, greedy(16))
    ids = tokens_of(deltas)
    text = text_of(deltas)
    assert text == tok.decode(ids)
    assert any(ord(c) > 127 for c in text), text
    # Some characters span several tokens: those deltas carry a token and no text, and no
    # delta before the last ever holds a broken character.
    assert any(d.token_ids and not d.text for d in deltas[:-1])
    assert "\ufffd" not in text_of(deltas[:-1])


# ---- (f) abort ----------------------------------------------------------------------------


def test_engine_abort_ends_running_request(engine: Engine, base: Reference) -> None:
    async def go() -> tuple[list[Delta], list[Delta], int]:
        stream = engine.add_request(base.prompt_ids, greedy(LONG, ignore_eos=True))
        try:
            head = [await anext(stream), await anext(stream)]
            engine.abort(stream.request_id)
            rest = await consume(stream)
        finally:
            stream.abort()
        return head, rest, engine.num_unfinished

    head, rest, unfinished = asyncio.run(go())
    assert [d.finish_reason for d in head] == [None, None]
    assert rest[-1].finish_reason == "abort"
    assert rest[-1].token_ids == []
    assert all(d.finish_reason is None for d in rest[:-1])
    n = len(tokens_of(head + rest))
    assert 2 <= n < LONG
    assert rest[-1].completion_tokens == n
    assert tokens_of(head + rest)[:REF_TOKENS] == base.tokens[:n]
    assert unfinished == 0  # the abort delta is sent after the request is dropped
    # The engine goes on serving, and aborting unknown or finished requests is harmless.
    engine.abort("no-such-request")
    engine.abort(rest[-1].request_id)
    deltas = generate(engine, base.prompt_ids, greedy(3))
    assert tokens_of(deltas) == base.tokens[:3]
    assert deltas[-1].finish_reason == "length"
    assert engine.num_unfinished == 0


def test_stream_abort_stops_iteration_and_frees_request(engine: Engine, base: Reference) -> None:
    async def go() -> tuple[list[Delta], list[Delta]]:
        stream = engine.add_request(base.prompt_ids, greedy(LONG, ignore_eos=True))
        head = [await anext(stream), await anext(stream)]
        stream.abort()
        stream.abort()  # idempotent
        rest = await consume(stream)  # the stream ends at once
        # The engine is serving requests one at a time, first come first served: the next
        # request completes only once the aborted one is gone.
        after = await consume(engine.add_request(base.prompt_ids, greedy(3)))
        return head + rest, after

    got, after = asyncio.run(go())
    assert len(got) == 2
    assert tokens_of(after) == base.tokens[:3]
    assert after[-1].finish_reason == "length"
    assert engine.num_unfinished == 0


def test_abort_waiting_request(engine: Engine, base: Reference) -> None:
    async def go() -> tuple[list[Delta], list[Delta]]:
        first = engine.add_request(base.prompt_ids, greedy(LONG, ignore_eos=True))
        second = engine.add_request(base.prompt_ids, greedy(LONG, ignore_eos=True))
        try:
            head = [await anext(first)]
            engine.abort(second.request_id)
            second_deltas = await consume(second)
            engine.abort(first.request_id)
            first_deltas = head + await consume(first)
        finally:
            first.abort()
            second.abort()
        return first_deltas, second_deltas

    first_deltas, second_deltas = asyncio.run(go())
    assert second_deltas[-1].finish_reason == "abort"
    assert len(tokens_of(second_deltas)) < LONG
    assert first_deltas[-1].finish_reason == "abort"
    assert len(tokens_of(first_deltas)) < LONG
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
        generate(engine, base.prompt_ids, greedy(3))
    assert engine.num_unfinished == 0
    monkeypatch.undo()
    deltas = generate(engine, base.prompt_ids, greedy(3))
    assert tokens_of(deltas) == base.tokens[:3]
    assert deltas[-1].finish_reason == "length"


# ---- (g) several requests at once -----------------------------------------------------------


def test_concurrent_requests_match_solo_runs(engine: Engine) -> None:
    prompts = ["The capital of France is", "1, 2, 3, 4,", "def add(a, b):"]
    solo = [generate(engine, p, greedy(5)) for p in prompts]

    async def go() -> list[list[Delta]]:
        streams = [
            engine.add_request(p, greedy(5), request_id=f"multi-{i}") for i, p in enumerate(prompts)
        ]
        # The id of a request still in flight cannot be reused.
        with pytest.raises(RequestRejected, match="already in use"):
            engine.add_request("x", greedy(1), request_id="multi-1")
        assert engine.num_unfinished == len(prompts)
        return list(await asyncio.gather(*(consume(s) for s in streams)))

    together = asyncio.run(go())
    for i, (alone, batched) in enumerate(zip(solo, together, strict=True)):
        assert {d.request_id for d in batched} == {f"multi-{i}"}
        assert tokens_of(batched) == tokens_of(alone)
        assert text_of(batched) == text_of(alone)
        assert batched[-1].finish_reason == alone[-1].finish_reason
        assert sum(d.finish_reason is not None for d in batched) == 1
    assert engine.num_unfinished == 0
    # Finished ids are free again.
    again = generate(engine, prompts[0], SamplingParams(max_tokens=1, temperature=0.0))
    assert tokens_of(again) == tokens_of(solo[0])[:1]
