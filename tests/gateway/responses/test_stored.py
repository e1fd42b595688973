"""Stored responses and what the Responses adapter refuses or survives: retrieve, input
items and delete; what a chat upstream cannot do is a 400 naming the field; a stream
closed early closes the chat stream; a failing chat stream keeps nothing; a dead store
still answers; stored responses expire after their TTL."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import (
    Response,
    ResponseItemList,
)

from gateway.call import Call, Reply
from gateway.errors import InvalidRequest, NotFound, UpstreamError
from gateway.responses import ResponsesAdapter
from gateway.responses.store import store_key
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.memory import MemoryStore
from gateway.stores.redis import RedisStore
from tests.gateway.responses.chat_bench import (
    Chat,
    events_of,
    response_of,
    responses_call,
)

pytestmark = pytest.mark.anyio


async def test_retrieve_input_items_and_delete(store: FailOpenStore) -> None:
    adapter = ResponsesAdapter(store)
    chat = Chat("Fine.")
    first = response_of(await adapter.create(responses_call(input="How are you?"), chat))
    items = [{"type": "message", "role": "user", "content": "And now?", "id": "msg_mine"}]
    reply = await adapter.create(responses_call(input=items, previous_response_id=first.id), chat)
    assert reply.body is not None
    second = reply.body.data

    got = await adapter.retrieve("t", second["id"], input_items=False)
    assert got.body is not None and got.body.data == second

    listed = await adapter.retrieve("t", second["id"], input_items=True)
    assert listed.body is not None
    page = ResponseItemList.model_validate(listed.body.data)
    # Newest first (OpenAI's default order), the earlier turns of the chain included.
    assert [(i.type, i.role) for i in page.data] == [  # type: ignore[union-attr]
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    assert page.data[0].id == "msg_mine" and page.data[1].id == first.output[0].id
    assert (page.first_id, page.last_id, page.has_more) == ("msg_mine", page.data[2].id, False)

    deleted = await adapter.delete("t", second["id"])
    assert deleted.body is not None
    assert deleted.body.data == {"id": second["id"], "object": "response.deleted", "deleted": True}
    for call in (
        adapter.retrieve("t", second["id"], input_items=False),
        adapter.retrieve("t", second["id"], input_items=True),
        adapter.delete("t", second["id"]),
        adapter.retrieve("other", first.id, input_items=False),
    ):
        with pytest.raises(NotFound):
            await call
    assert (await adapter.retrieve("t", first.id, input_items=False)).body is not None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0]",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0]",
        ),
        (
            {
                "input": [
                    "Hi",
                    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                ]
            },
            "input[0]",
        ),
        (
            {
                "input": [
                    {"role": "user", "content": "Hi"},
                    {"type": "function_call_output", "call_id": "c", "output": "1"},
                ]
            },
            "input[1]",
        ),
        ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input[0]"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": "Hi", "tools": [{"type": "function", "name": "f"}]}, "tools"),
        ({"input": "Hi", "tool_choice": "required"}, "tool_choice"),
        ({"input": "Hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": "Hi", "top_p": "high"}, "top_p"),
    ],
)
async def test_what_chat_cannot_do_is_a_400(
    store: FailOpenStore, body: dict[str, Any], param: str
) -> None:
    chat = Chat()
    with pytest.raises(InvalidRequest) as caught:
        await ResponsesAdapter(store).create(responses_call(**body), chat)
    assert caught.value.param == param and caught.value.status_code == 400
    assert chat.requests == []


async def test_tool_choice_none_and_empty_tools_are_fine(store: FailOpenStore) -> None:
    chat = Chat()
    reply = await ResponsesAdapter(store).create(
        responses_call(input="Hi", tools=[], tool_choice="none"), chat
    )
    assert response_of(reply).tool_choice == "none"
    assert "tools" not in chat.requests[0] and "tool_choice" not in chat.requests[0]


async def test_closing_a_stream_early_closes_the_chat_stream(store: FailOpenStore) -> None:
    chat = Chat("one two three four five")
    reply = await ResponsesAdapter(store).create(responses_call(input="Hi", stream=True), chat)
    assert reply.stream is not None
    seen = []
    async for chunk in reply.stream:
        seen.append(chunk.data)
        if chunk.data["type"] == "response.output_text.delta":
            break
    assert not chat.closed
    await reply.stream.aclose()  # type: ignore[attr-defined]
    assert chat.closed and not chat.finished
    assert await store.get(store_key("t", seen[0]["response"]["id"])) is None


async def test_a_failing_chat_stream_raises_and_keeps_nothing(store: FailOpenStore) -> None:
    chat = Chat("one two three", fail_after=2)
    reply = await ResponsesAdapter(store).create(responses_call(input="Hi", stream=True), chat)
    assert reply.stream is not None
    seen: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError, match="died mid-answer"):
        async for chunk in reply.stream:
            seen.append(chunk.data)
    assert [e["type"] for e in seen[-2:]] == ["response.output_text.delta"] * 2
    assert chat.closed
    assert await store.get(store_key("t", seen[0]["response"]["id"])) is None


async def test_an_answer_in_the_other_shape_still_serves(store: FailOpenStore) -> None:
    chat = Chat("Hello there, friend.")

    async def body_only(call: Call) -> Reply:  # answers a stream request with a body
        return await chat(call.edit(stream=None, stream_options=None))

    async def stream_only(call: Call) -> Reply:  # answers with a stream whatever is asked
        return await chat(call.edit(stream=True, stream_options={"include_usage": True}))

    adapter = ResponsesAdapter(store)
    events = await events_of(
        await adapter.create(responses_call(input="Hi", stream=True), body_only)
    )
    final = Response.model_validate(events[-1]["response"])
    assert events[-1]["type"] == "response.completed"
    assert final.output_text == "Hello there, friend." and final.usage is not None
    response = response_of(await adapter.create(responses_call(input="Hi"), stream_only))
    assert response.output_text == "Hello there, friend." and chat.closed


async def test_a_dead_store_answers_and_chains_to_not_found() -> None:
    # A real Redis client pointed at a port nothing listens on: every call fails at once.
    store = FailOpenStore(RedisStore("redis://127.0.0.1:1/0", timeout_s=0.5), timeout_s=0.5)
    adapter = ResponsesAdapter(store)
    try:
        response = response_of(await adapter.create(responses_call(input="Hi"), Chat()))
        assert response.output_text == "Hello there, friend."
        with pytest.raises(InvalidRequest):
            await adapter.create(
                responses_call(input="x", previous_response_id=response.id), Chat()
            )
        with pytest.raises(NotFound):
            await adapter.retrieve("t", response.id, input_items=False)
    finally:
        await store.close()


async def test_stored_responses_expire_after_ttl() -> None:
    # ttl 0: expired as soon as stored (the memory store checks expiry on read).
    adapter = ResponsesAdapter(FailOpenStore(MemoryStore()), ttl_s=0)
    response = response_of(await adapter.create(responses_call(input="Hi"), Chat()))
    with pytest.raises(NotFound):
        await adapter.retrieve("t", response.id, input_items=False)
