"""The official OpenAI SDK against a real `llm-gateway serve` and the real model."""

from __future__ import annotations

import json
import socket
import time

import httpx
import openai
import pytest

from tests.gateway.conftest import MODEL_ID

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Tell me a short story about a cat who learns to swim."}]

# The engine's own answer, not the exact cache's (in the default chain) replay of an
# earlier test's: these tests measure the engine's streaming and speculation.
NO_CACHE = {"cache-control": "no-cache"}


@pytest.fixture(scope="module")
def client(server_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0)


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
    full = client.chat.completions.create(
        model=MODEL_ID, messages=STORY, temperature=0, max_tokens=40
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


# ---- errors -----------------------------------------------------------------------------------


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9", messages=CAPITAL)
    assert e.value.code == "model_not_found"
    assert e.value.body["param"] == "model"  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs=True
        ({"logit_bias": {"not-a-token": 5}}, "logit_bias"),
        ({"logit_bias": {"99999999": 5}}, "logit_bias"),
        ({"extra_body": {"min_p": 2}}, "min_p"),
        ({"max_tokens": 100_000}, "messages"),
    ],
)
def test_bad_parameters_are_400(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    args = {"model": MODEL_ID, "messages": CAPITAL, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    assert e.value.body["param"] == param  # type: ignore[index]
    assert e.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert e.value.body["message"]  # type: ignore[index]


def test_raw_http_errors_have_openai_shape(server_url: str) -> None:
    bad_json = httpx.post(
        server_url + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert bad_json.status_code == 400
    assert set(bad_json.json()["error"]) == {"message", "type", "param", "code"}
    missing = httpx.post(server_url + "/v1/chat/completions", json={"model": MODEL_ID})
    assert missing.status_code == 400
    assert "messages" in missing.json()["error"]["message"]
    nowhere = httpx.get(server_url + "/v1/nothing-here")
    assert nowhere.status_code == 404 and "error" in nowhere.json()
    assert httpx.get(server_url + "/health").json() == {"status": "ok"}


def test_a_huge_prompt_is_refused_and_the_server_keeps_serving(server_url: str) -> None:
    """4 MB of prompt (under the 32 MB body limit): rendered and tokenized off the event
    loop, refused for its length, and the server answers the next request as usual."""
    huge = [{"role": "user", "content": "lorem ipsum " * 350_000}]
    reply = httpx.post(
        server_url + "/v1/chat/completions",
        json={"model": MODEL_ID, "messages": huge, "max_tokens": 1},
        headers=NO_CACHE,
        timeout=120,
    )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "messages"
    assert httpx.get(server_url + "/health").status_code == 200
    small = {"model": MODEL_ID, "messages": CAPITAL, "max_tokens": 2}
    assert httpx.post(server_url + "/v1/chat/completions", json=small).status_code == 200


def test_too_many_generations_in_one_request_are_refused(client: openai.OpenAI) -> None:
    """64 prompts x n=128 fit in 1 KB: refused, not turned into 8,192 generations."""
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL_ID, prompt=["hi"] * 64, n=128, max_tokens=1)
    assert info.value.code == "too_many_generations"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_ID, messages=CAPITAL, n=129, max_tokens=1)


def test_server_keeps_serving_after_errors(client: openai.OpenAI) -> None:
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL_ID, messages=CAPITAL, temperature=-1)
    r = client.chat.completions.create(
        model=MODEL_ID, messages=CAPITAL, temperature=0, max_tokens=8
    )
    assert r.choices[0].message.content


# ---- sampling controls and logprobs --------------------------------------------------------


def test_chat_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL_ID, messages=CAPITAL, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == r.usage.completion_tokens  # type: ignore[union-attr]
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
    text = "".join(e.token for e in content if e.bytes)
    assert (r.choices[0].message.content or "") in text
    streamed = client.chat.completions.create(
        model=MODEL_ID, messages=CAPITAL, temperature=0, max_tokens=6, logprobs=True, stream=True
    )
    tokens = [e.token for c in streamed if c.choices and c.choices[0].logprobs
              for e in (c.choices[0].logprobs.content or [])]  # fmt: skip
    assert tokens == [e.token for e in content]


def test_completion_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL_ID, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]


def test_logit_bias_forces_a_token(client: openai.OpenAI) -> None:
    plain = client.completions.create(
        model=MODEL_ID, prompt="Hello", max_tokens=4, temperature=0, logprobs=0
    )
    forced = client.completions.create(
        model=MODEL_ID, prompt="Hello", max_tokens=4, temperature=0, logit_bias={"42": 100},
        logprobs=0,
    )  # fmt: skip
    assert forced.choices[0].text != plain.choices[0].text
    assert forced.choices[0].logprobs is not None
    tokens = forced.choices[0].logprobs.tokens or []
    assert len(tokens) == 4 and len(set(tokens)) == 1  # token 42, four times


def test_penalties_change_a_repetitive_answer(client: openai.OpenAI) -> None:
    prompt = [{"role": "user", "content": "Repeat the word 'apple' twenty times."}]
    plain = client.chat.completions.create(
        model=MODEL_ID, messages=prompt, temperature=0, max_tokens=40
    )
    penalised = client.chat.completions.create(
        model=MODEL_ID, messages=prompt, temperature=0, max_tokens=40, frequency_penalty=2.0
    )
    text, other = plain.choices[0].message.content or "", penalised.choices[0].message.content or ""
    assert text.lower().count("apple") > other.lower().count("apple")


def test_engine_metrics_are_exposed(client: openai.OpenAI, server_url: str) -> None:
    client.chat.completions.create(model=MODEL_ID, messages=CAPITAL, temperature=0, max_tokens=4)
    body = httpx.get(server_url + "/metrics").text
    for name in (
        "llm_engine:num_requests_running",
        "llm_engine:num_requests_waiting",
        "llm_engine:kv_cache_usage_perc",
        "llm_engine:prefix_cache_queries_total",
        "llm_engine:prefix_cache_hits_total",
        "llm_engine:time_to_first_token_seconds_bucket",
        "llm_engine:inter_token_latency_seconds_bucket",
        "llm_engine:e2e_request_latency_seconds_count",
    ):
        assert name in body, name
    length = 'llm_engine:request_success_total{finished_reason="length"}'
    success = [line for line in body.splitlines() if line.startswith(length)]
    assert success and float(success[0].split()[-1]) >= 1


def _metric(server_url: str, prefix: str) -> float:
    lines = [
        ln for ln in httpx.get(server_url + "/metrics").text.splitlines() if ln.startswith(prefix)
    ]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_client_disconnect_aborts_the_generation(server_url: str) -> None:
    aborted = 'llm_engine:request_success_total{finished_reason="abort"}'
    before = _metric(server_url, aborted)
    body = {"model": MODEL_ID, "messages": STORY, "stream": True, "max_tokens": 4000,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    with httpx.stream("POST", server_url + "/v1/chat/completions", json=body) as response:
        data = (ln for ln in response.iter_lines() if ln.startswith("data: "))
        for _ in range(3):
            next(data)
    # The connection is closed mid-answer: the engine must drop the request (4,000 tokens
    # would take minutes) and free its KV blocks. Wait for that event, bounded.
    deadline = time.monotonic() + 15
    while _metric(server_url, aborted) < before + 1:
        assert time.monotonic() < deadline, "the generation was not aborted"
        time.sleep(0.05)
    assert _metric(server_url, "llm_engine:num_requests_running") == 0
    assert _metric(server_url, "llm_engine:kv_cache_usage_perc") == 0


def test_a_client_leaving_a_non_streamed_request_aborts_it(server_url: str) -> None:
    """Nothing is being written to this client yet: the gateway still notices it left."""
    aborted = 'llm_engine:request_success_total{finished_reason="abort"}'
    before = _metric(server_url, aborted)
    request = {"model": MODEL_ID, "messages": STORY, "max_tokens": 4000, "temperature": 0}
    body = json.dumps({**request, "ignore_eos": True}).encode()
    host, port = server_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "cache-control: no-store\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        deadline = time.monotonic() + 15
        while _metric(server_url, "llm_engine:num_requests_running") < 1:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.05)
    # The socket is closed: 4,000 tokens would take minutes; the request must be dropped.
    deadline = time.monotonic() + 15
    while _metric(server_url, aborted) < before + 1:
        assert time.monotonic() < deadline, "the generation was not aborted"
        time.sleep(0.05)
    assert _metric(server_url, "llm_engine:num_requests_running") == 0


PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs every evening at six. He wound the "
    "clockwork, trimmed the wick and polished the great lens until it shone."
)


@pytest.mark.parametrize("stream", [False, True])
def test_speculative_request_reports_its_guesses(
    client: openai.OpenAI, server_url: str, stream: bool
) -> None:
    messages = [{"role": "user", "content": f"Repeat this passage exactly:\n\n{PASSAGE}"}]
    kwargs = {"model": MODEL_ID, "messages": messages, "max_tokens": 40, "temperature": 0}
    plain = client.chat.completions.create(**kwargs)  # the server's default here: off
    assert plain.usage is not None and plain.usage.completion_tokens_details is None
    drafted_before = _metric(server_url, "llm_engine:spec_decode_num_draft_tokens_total")
    if stream:
        chunks = list(
            client.chat.completions.create(
                **kwargs,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"speculative": True},
                extra_headers=NO_CACHE,
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        fast = client.chat.completions.create(
            **kwargs, extra_body={"speculative": True}, extra_headers=NO_CACHE
        )
        text, usage = fast.choices[0].message.content, fast.usage
    assert text == plain.choices[0].message.content  # greedy: same answer either way
    assert usage is not None and usage.completion_tokens_details is not None
    details = usage.completion_tokens_details
    assert details.accepted_prediction_tokens > 10
    drafted = _metric(server_url, "llm_engine:spec_decode_num_draft_tokens_total")
    assert drafted - drafted_before == (
        details.accepted_prediction_tokens + details.rejected_prediction_tokens
    )


# ---- the Responses API (served over chat by the gateway) and prefix caching -----------------

HELLO = "Say hello to Ada."


def test_responses_create(client: openai.OpenAI) -> None:
    r = client.responses.create(model=MODEL_ID, input=HELLO, max_output_tokens=12, temperature=0)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL_ID
    assert r.status in ("completed", "incomplete")
    assert r.output_text
    assert r.usage is not None and r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 12
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_responses_stream(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=MODEL_ID, input=HELLO, max_output_tokens=12, temperature=0, stream=True
        )
    )
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in ("response.completed", "response.incomplete")
    first_delta = types.index("response.output_text.delta")
    assert types.index("response.output_item.added") < first_delta
    assert types.index("response.output_text.done") > first_delta
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete")
    assert deltas and deltas == final.response.output_text


def test_responses_chain_retrieve_and_delete(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL_ID, input="My name is Ada.", max_output_tokens=8, temperature=0
    )
    second = client.responses.create(
        model=MODEL_ID,
        input="What is my name?",
        previous_response_id=first.id,
        max_output_tokens=8,
        temperature=0,
    )
    assert second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    # The second request carries the first exchange: a longer prompt.
    assert second.usage.input_tokens > first.usage.input_tokens
    kept = client.responses.retrieve(first.id)
    assert kept.id == first.id and kept.output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_a_shared_prefix_reports_cached_tokens(client: openai.OpenAI) -> None:
    system = "You answer questions about the harbour office, briefly and politely. " * 3
    for question in ("When does it open?", "Where is it?"):
        r = client.chat.completions.create(
            model=MODEL_ID,
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ],
            max_tokens=1,
            extra_headers=NO_CACHE,
        )
    assert r.usage is not None and r.usage.prompt_tokens_details is not None
    # The second request found the system prompt's KV blocks from the first.
    cached = r.usage.prompt_tokens_details.cached_tokens or 0
    assert 0 < cached < r.usage.prompt_tokens
