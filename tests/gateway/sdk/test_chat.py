"""The official OpenAI SDK against a real `llm-gateway serve` and the real model: the
model list, chat answers streamed and not (the stream reassembles to the same answer),
determinism and seeds, max_tokens and stop strings, n choices, legacy completions."""

from __future__ import annotations

import openai
import pytest

from tests.gateway.sdk.prompts import CAPITAL, NO_CACHE, STORY
from tests.serving import MODEL_ID


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    # The chat model, and the local embedding model /v1/embeddings serves.
    assert [m.id for m in client.models.list()] == [MODEL_ID, "all-MiniLM-L6-v2"]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    assert client.models.retrieve("all-MiniLM-L6-v2").id == "all-MiniLM-L6-v2"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_answers_with_the_model(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL_ID, messages=CAPITAL, temperature=0)
    choice = r.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert r.object == "chat.completion" and r.model == MODEL_ID and r.id.startswith("chatcmpl-")
    assert r.usage is not None
    assert r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_reassembles_to_the_same_answer(client: openai.OpenAI) -> None:
    # Both answers from the same engine state: every prompt token but the last from the
    # prefix cache (a warm-up fills it). A cold prompt is computed by other kernels
    # (a many-row prefill, float32 activations) than a cached prompt's last token (a
    # decode row, int8 activations on packed weights): their log-probabilities differ by
    # ~0.03, enough to flip a close greedy choice between a cold and a warm request.
    client.chat.completions.create(
        model=MODEL_ID, messages=STORY, temperature=0, max_tokens=40, extra_headers=NO_CACHE
    )
    full = client.chat.completions.create(
        model=MODEL_ID, messages=STORY, temperature=0, max_tokens=40, extra_headers=NO_CACHE
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL_ID,
            messages=STORY,
            temperature=0,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=NO_CACHE,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["length"]
    assert (
        len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 5
    )  # really streamed
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 40 == full.usage.completion_tokens  # type: ignore[union-attr]


def test_temperature_zero_is_deterministic(client: openai.OpenAI) -> None:
    a, b = (
        client.chat.completions.create(model=MODEL_ID, messages=STORY, temperature=0, max_tokens=30)
        for _ in range(2)
    )
    assert a.choices[0].message.content == b.choices[0].message.content


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    def run(seed: int) -> str:
        r = client.chat.completions.create(
            model=MODEL_ID, messages=STORY, temperature=1.0, seed=seed, max_tokens=30
        )
        return r.choices[0].message.content or ""

    first = run(1234)
    assert run(1234) == first
    assert any(run(s) != first for s in (1, 2, 3))


def test_max_tokens_stops_with_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL_ID, messages=STORY, temperature=0, max_tokens=5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5
    r2 = client.chat.completions.create(
        model=MODEL_ID, messages=STORY, temperature=0, max_completion_tokens=7
    )
    assert r2.usage is not None and r2.usage.completion_tokens == 7


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_the_answer(client: openai.OpenAI, stream: bool) -> None:
    base = client.chat.completions.create(
        model=MODEL_ID, messages=STORY, temperature=0, max_tokens=60
    )
    text = base.choices[0].message.content or ""
    words = text.split()
    stop = " " + words[len(words) // 2]  # a word from the middle, with its leading space
    cut = text[: text.index(stop)]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=MODEL_ID,
                messages=STORY,
                temperature=0,
                max_tokens=60,
                stop=[stop],
                stream=True,
            )
        )
        got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reason = [
            c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
        ]
        assert reason == ["stop"]
    else:
        r = client.chat.completions.create(
            model=MODEL_ID, messages=STORY, temperature=0, max_tokens=60, stop=stop
        )
        got, reason_one = r.choices[0].message.content, r.choices[0].finish_reason
        assert reason_one == "stop"
    assert got == cut


def test_n_choices(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL_ID, messages=STORY, temperature=1.0, seed=7, n=2, max_tokens=12
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage is not None and r.usage.completion_tokens == 24


def test_legacy_completions(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL_ID, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert "Paris" in r.choices[0].text
    echoed = client.completions.create(
        model=MODEL_ID, prompt="Once upon a time", max_tokens=4, temperature=0, echo=True
    )
    assert echoed.choices[0].text.startswith("Once upon a time")
    stream = list(
        client.completions.create(
            model=MODEL_ID,
            prompt="The capital of France is",
            max_tokens=8,
            temperature=0,
            stream=True,
        )
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == r.choices[0].text
    default = client.completions.create(
        model=MODEL_ID, prompt="Count: 1, 2, 3,", temperature=0, extra_body={"ignore_eos": True}
    )
    assert default.usage is not None and default.usage.completion_tokens == 16  # OpenAI's default
