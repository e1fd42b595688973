"""The Responses API over a chat upstream (gateway/responses/), over the memory store and
a real Redis: the chat request each Responses request becomes, the Response object and
the streaming events as the OpenAI SDK parses them, incomplete answers, chaining with
and chaining with previous_response_id (stored responses, refusals and failures:
test_stored.py)."""

from __future__ import annotations

import re

import pytest
from openai.types.responses import (
    ResponseCompletedEvent,
)

from gateway.errors import InvalidRequest, NotFound
from gateway.responses import ResponsesAdapter
from gateway.responses.store import store_key
from gateway.stores.fail_open import FailOpenStore
from tests.gateway.responses.chat_bench import (
    EVENT,
    UPSTREAM_HEADERS,
    Chat,
    events_of,
    response_of,
    responses_call,
)

pytestmark = pytest.mark.anyio


async def test_string_input_is_one_user_message(store: FailOpenStore) -> None:
    chat = Chat()
    await ResponsesAdapter(store).create(
        responses_call(input="Hi", instructions="Be brief.", max_output_tokens=50, temperature=0.2,
              top_p=0.9, user="u1", seed=7, metadata={"k": "v"}),
        chat,
    )  # fmt: skip
    assert chat.requests == [
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            "max_tokens": 50,
            "temperature": 0.2,
            "top_p": 0.9,
            "seed": 7,
            "user": "u1",
        }
    ]


async def test_item_list_becomes_chat_messages(store: FailOpenStore) -> None:
    chat = Chat()
    items = [
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Salut"}]},
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
        },
    ]
    await ResponsesAdapter(store).create(
        responses_call(input=items, text={"format": {"type": "text"}}), chat
    )
    assert chat.requests[0]["messages"] == [
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Salut"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    assert "response_format" not in chat.requests[0]


async def test_text_formats_become_response_format(store: FailOpenStore) -> None:
    chat = Chat()
    adapter = ResponsesAdapter(store)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    reply = await adapter.create(responses_call(input="x", text={"format": fmt}), chat)
    await adapter.create(responses_call(input="x", text={"format": {"type": "json_object"}}), chat)
    assert [r["response_format"] for r in chat.requests] == [
        {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}},
        {"type": "json_object"},
    ]
    assert response_of(reply).text is not None
    assert reply.body is not None and reply.body.data["text"] == {"format": fmt}


async def test_response_object_parses_with_the_sdk(store: FailOpenStore) -> None:
    reply = await ResponsesAdapter(store).create(
        responses_call(
            input="Hi", instructions="Be brief.", max_output_tokens=50, metadata={"k": "v"}
        ),
        Chat("Hello there, friend."),
    )
    assert reply.headers == UPSTREAM_HEADERS  # the upstream's headers reach the client
    assert reply.body is not None and "output_text" not in reply.body.data
    response = response_of(reply)
    assert re.fullmatch(r"resp_[0-9a-f]{32}", response.id)
    assert response.status == "completed" and response.incomplete_details is None
    assert response.model == "engine-model"  # the chat answer's
    assert response.output_text == "Hello there, friend."
    message = response.output[0]
    assert message.type == "message" and re.fullmatch(r"msg_[0-9a-f]{32}", message.id)
    assert message.status == "completed" and message.role == "assistant"
    assert response.usage is not None
    assert response.usage.input_tokens == 12 and response.usage.output_tokens == 3
    assert response.usage.total_tokens == 15
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert (response.instructions, response.max_output_tokens) == ("Be brief.", 50)
    assert (response.metadata, response.tools) == ({"k": "v"}, [])
    assert reply.body.data["store"] is True  # echoed, though the SDK's type has no field for it
    assert (response.tool_choice, response.parallel_tool_calls) == ("auto", True)
    assert response.error is None and response.previous_response_id is None


async def test_length_finish_is_incomplete(store: FailOpenStore) -> None:
    adapter = ResponsesAdapter(store)
    reply = await adapter.create(responses_call(input="Hi"), Chat(finish_reason="length"))
    response = response_of(reply)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"  # type: ignore[union-attr]

    streamed = await adapter.create(
        responses_call(input="Hi", stream=True), Chat(finish_reason="length")
    )
    events = await events_of(streamed)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_stream_events_parse_in_order(store: FailOpenStore) -> None:
    chat = Chat("Hello there, friend.")
    reply = await ResponsesAdapter(store).create(responses_call(input="Hi", stream=True), chat)
    assert reply.headers == UPSTREAM_HEADERS
    assert chat.requests[0]["stream"] is True
    assert chat.requests[0]["stream_options"] == {"include_usage": True}
    events = [EVENT.validate_python(e) for e in await events_of(reply)]
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["Hello", " there,", " friend."]
    item_id = events[2].item.id
    assert {e.item_id for e in events[3:9]} == {item_id}
    assert events[7].text == "Hello there, friend."
    final = events[-1]
    assert isinstance(final, ResponseCompletedEvent)
    assert final.response.id == events[0].response.id
    assert final.response.output_text == "Hello there, friend."
    assert final.response.output[0].id == item_id
    assert final.response.usage is not None and final.response.usage.output_tokens == 3
    assert chat.finished


async def test_chaining_sends_the_earlier_conversation(store: FailOpenStore) -> None:
    adapter = ResponsesAdapter(store)
    chat = Chat("First answer.")
    first = response_of(
        await adapter.create(responses_call(input="One", instructions="Old rules."), chat)
    )
    chat.text = "Second answer."
    second_call = responses_call(
        input="Two", instructions="New rules.", previous_response_id=first.id
    )
    events = await events_of(await adapter.create(second_call.edit(stream=True), chat))
    second = events[-1]["response"]
    assert second["previous_response_id"] == first.id
    chat.text = "Third answer."
    await adapter.create(responses_call(input="Three", previous_response_id=second["id"]), chat)
    # Instructions are not carried over; every earlier input and output is.
    assert chat.requests[1]["messages"] == [
        {"role": "system", "content": "New rules."},
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Two"},
    ]
    assert chat.requests[2]["messages"] == [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Two"},
        {"role": "assistant", "content": "Second answer."},
        {"role": "user", "content": "Three"},
    ]


async def test_unknown_previous_response_is_a_400(store: FailOpenStore) -> None:
    adapter = ResponsesAdapter(store)
    chat = Chat()
    theirs = response_of(await adapter.create(responses_call(tenant="a", input="Hi"), chat))
    for tenant, previous in (("a", "resp_missing"), ("a:b", theirs.id), ("b", theirs.id)):
        with pytest.raises(InvalidRequest) as caught:
            call = responses_call(tenant=tenant, input="x", previous_response_id=previous)
            await adapter.create(call, chat)
        assert caught.value.param == "previous_response_id"
        assert caught.value.message == f"Previous response with id '{previous}' not found."
    assert len(chat.requests) == 1
    assert await store.get(store_key("a", theirs.id)) is not None


async def test_store_false_keeps_nothing(store: FailOpenStore) -> None:
    adapter = ResponsesAdapter(store)
    chat = Chat()
    reply = await adapter.create(responses_call(input="Hi", store=False), chat)
    events = await events_of(
        await adapter.create(responses_call(input="Hi", store=False, stream=True), chat)
    )
    assert reply.body is not None and reply.body.data["store"] is False
    assert events[-1]["response"]["store"] is False
    for response_id in (reply.body.data["id"], events[-1]["response"]["id"]):
        assert await store.get(store_key("t", response_id)) is None
        with pytest.raises(NotFound):
            await adapter.retrieve("t", response_id, input_items=False)
