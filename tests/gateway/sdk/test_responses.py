"""The Responses API through the official SDK (served over chat by the gateway): create,
stream, chain, retrieve and delete; and a shared prompt prefix reported as cached tokens."""

from __future__ import annotations

import openai
import pytest

from tests.gateway.sdk.prompts import NO_CACHE
from tests.serving import MODEL_ID

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
