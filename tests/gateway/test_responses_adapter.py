"""The Responses API over a chat upstream (gateway/responses/), over the memory store and
a real Redis: the chat request each Responses request becomes, the Response object and
the streaming events as the OpenAI SDK parses them, incomplete answers, chaining with
previous_response_id, stored responses (retrieve, input items, delete), refusals of
what a chat upstream cannot do, and a stream closed early closing the chat stream."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseItemList,
    ResponseStreamEvent,
)
from pydantic import TypeAdapter

from gateway.call import CHAT, RESPONSES, Call, Reply, make_call
from gateway.errors import InvalidRequest, NotFound, UpstreamError
from gateway.payload import Chunk, Payload
from gateway.responses import ResponsesAdapter
from gateway.responses.store import store_key
from gateway.stores.fail_open import FailOpenStore
from gateway.stores.memory import MemoryStore
from gateway.stores.redis import RedisStore

pytestmark = pytest.mark.anyio

EVENT = TypeAdapter[Any](ResponseStreamEvent)
UPSTREAM_HEADERS = {"x-upstream": "chat"}


class Chat:
    """A chat upstream answering `text`: a chat.completion, or chunks as the engine sends
    them (the role, one per word, the finish reason, the usage when asked for). It keeps
    every request it got, and notes whether its stream ran to the end or was closed;
    `fail_after`: the stream raises after that many words."""

    def __init__(
        self,
        text: str = "Hello there, friend.",
        *,
        finish_reason: str = "stop",
        fail_after: int | None = None,
    ) -> None:
        self.text = text
        self.finish_reason = finish_reason
        self.fail_after = fail_after
        self.requests: list[dict[str, Any]] = []
        self.finished = False
        self.closed = False

    async def __call__(self, call: Call) -> Reply:
        assert call.endpoint == CHAT and call.request.messages
        self.requests.append(call.body.data)
        if call.stream:
            return Reply(stream=self._chunks(call.body.data), headers=dict(UPSTREAM_HEADERS))
        message = {"role": "assistant", "content": self.text}
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason}
        body = {**self._head("chat.completion"), "choices": [choice], "usage": self._usage()}
        return Reply(body=Payload.of(body), headers=dict(UPSTREAM_HEADERS))

    def _head(self, object_: str) -> dict[str, Any]:
        return {"id": "chatcmpl-1", "object": object_, "created": 1, "model": "engine-model"}

    def _usage(self) -> dict[str, Any]:
        words = len(self.text.split())
        return {
            "prompt_tokens": 12,
            "completion_tokens": words,
            "total_tokens": 12 + words,
            "prompt_tokens_details": {"cached_tokens": 4},
        }

    async def _chunks(self, request: dict[str, Any]) -> AsyncIterator[Chunk]:
        head = self._head("chat.completion.chunk")

        def chunk(choices: list[dict[str, Any]], **more: Any) -> Chunk:
            return Chunk.of({**head, "choices": choices, **more})

        try:
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
            for i, word in enumerate(self.text.split(" ")):
                if i == self.fail_after:
                    raise UpstreamError("the backend died mid-answer", upstream_status=None)
                delta = {"content": word if i == 0 else " " + word}
                yield chunk([{"index": 0, "delta": delta}])
            yield chunk([{"index": 0, "delta": {}, "finish_reason": self.finish_reason}])
            if (request.get("stream_options") or {}).get("include_usage"):
                yield chunk([], usage=self._usage())
            self.finished = True
        finally:
            self.closed = True


def _call(tenant: str = "t", **body: Any) -> Call:
    return make_call(RESPONSES, {"model": "m", **body}, tenant=tenant, request_id="req-1")


async def _events(reply: Reply) -> list[dict[str, Any]]:
    assert reply.stream is not None
    out = []
    async for chunk in reply.stream:
        assert chunk.event == chunk.data["type"]
        assert chunk.frame.startswith(f"event: {chunk.event}\ndata: ".encode())
        out.append(chunk.data)
    return out


def _response(reply: Reply) -> Response:
    assert reply.body is not None
    return Response.model_validate(reply.body.data)


async def test_string_input_is_one_user_message(store: FailOpenStore) -> None:
    chat = Chat()
    await ResponsesAdapter(store).create(
        _call(input="Hi", instructions="Be brief.", max_output_tokens=50, temperature=0.2,
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
        _call(input=items, text={"format": {"type": "text"}}), chat
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
    reply = await adapter.create(_call(input="x", text={"format": fmt}), chat)
    await adapter.create(_call(input="x", text={"format": {"type": "json_object"}}), chat)
    assert [r["response_format"] for r in chat.requests] == [
        {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}},
        {"type": "json_object"},
    ]
    assert _response(reply).text is not None
    assert reply.body is not None and reply.body.data["text"] == {"format": fmt}


async def test_response_object_parses_with_the_sdk(store: FailOpenStore) -> None:
    reply = await ResponsesAdapter(store).create(
        _call(input="Hi", instructions="Be brief.", max_output_tokens=50, metadata={"k": "v"}),
        Chat("Hello there, friend."),
    )
    assert reply.headers == UPSTREAM_HEADERS  # the upstream's headers reach the client
    assert reply.body is not None and "output_text" not in reply.body.data
    response = _response(reply)
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
    reply = await adapter.create(_call(input="Hi"), Chat(finish_reason="length"))
    response = _response(reply)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"  # type: ignore[union-attr]

    streamed = await adapter.create(_call(input="Hi", stream=True), Chat(finish_reason="length"))
    events = await _events(streamed)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_stream_events_parse_in_order(store: FailOpenStore) -> None:
    chat = Chat("Hello there, friend.")
    reply = await ResponsesAdapter(store).create(_call(input="Hi", stream=True), chat)
    assert reply.headers == UPSTREAM_HEADERS
    assert chat.requests[0]["stream"] is True
    assert chat.requests[0]["stream_options"] == {"include_usage": True}
    events = [EVENT.validate_python(e) for e in await _events(reply)]
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
    first = _response(await adapter.create(_call(input="One", instructions="Old rules."), chat))
    chat.text = "Second answer."
    second_call = _call(input="Two", instructions="New rules.", previous_response_id=first.id)
    events = await _events(await adapter.create(second_call.edit(stream=True), chat))
    second = events[-1]["response"]
    assert second["previous_response_id"] == first.id
    chat.text = "Third answer."
    await adapter.create(_call(input="Three", previous_response_id=second["id"]), chat)
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
    theirs = _response(await adapter.create(_call(tenant="a", input="Hi"), chat))
    for tenant, previous in (("a", "resp_missing"), ("a:b", theirs.id), ("b", theirs.id)):
        with pytest.raises(InvalidRequest) as caught:
            call = _call(tenant=tenant, input="x", previous_response_id=previous)
            await adapter.create(call, chat)
        assert caught.value.param == "previous_response_id"
        assert caught.value.message == f"Previous response with id '{previous}' not found."
    assert len(chat.requests) == 1
    assert await store.get(store_key("a", theirs.id)) is not None


async def test_store_false_keeps_nothing(store: FailOpenStore) -> None:
    adapter = ResponsesAdapter(store)
    chat = Chat()
    reply = await adapter.create(_call(input="Hi", store=False), chat)
    events = await _events(await adapter.create(_call(input="Hi", store=False, stream=True), chat))
    assert reply.body is not None and reply.body.data["store"] is False
    assert events[-1]["response"]["store"] is False
    for response_id in (reply.body.data["id"], events[-1]["response"]["id"]):
        assert await store.get(store_key("t", response_id)) is None
        with pytest.raises(NotFound):
            await adapter.retrieve("t", response_id, input_items=False)


async def test_retrieve_input_items_and_delete(store: FailOpenStore) -> None:
    adapter = ResponsesAdapter(store)
    chat = Chat("Fine.")
    first = _response(await adapter.create(_call(input="How are you?"), chat))
    items = [{"type": "message", "role": "user", "content": "And now?", "id": "msg_mine"}]
    reply = await adapter.create(_call(input=items, previous_response_id=first.id), chat)
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
        await ResponsesAdapter(store).create(_call(**body), chat)
    assert caught.value.param == param and caught.value.status_code == 400
    assert chat.requests == []


async def test_tool_choice_none_and_empty_tools_are_fine(store: FailOpenStore) -> None:
    chat = Chat()
    reply = await ResponsesAdapter(store).create(
        _call(input="Hi", tools=[], tool_choice="none"), chat
    )
    assert _response(reply).tool_choice == "none"
    assert "tools" not in chat.requests[0] and "tool_choice" not in chat.requests[0]


async def test_closing_a_stream_early_closes_the_chat_stream(store: FailOpenStore) -> None:
    chat = Chat("one two three four five")
    reply = await ResponsesAdapter(store).create(_call(input="Hi", stream=True), chat)
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
    reply = await ResponsesAdapter(store).create(_call(input="Hi", stream=True), chat)
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
    events = await _events(await adapter.create(_call(input="Hi", stream=True), body_only))
    final = Response.model_validate(events[-1]["response"])
    assert events[-1]["type"] == "response.completed"
    assert final.output_text == "Hello there, friend." and final.usage is not None
    response = _response(await adapter.create(_call(input="Hi"), stream_only))
    assert response.output_text == "Hello there, friend." and chat.closed


async def test_a_dead_store_answers_and_chains_to_not_found() -> None:
    # A real Redis client pointed at a port nothing listens on: every call fails at once.
    store = FailOpenStore(RedisStore("redis://127.0.0.1:1/0", timeout_s=0.5), timeout_s=0.5)
    adapter = ResponsesAdapter(store)
    try:
        response = _response(await adapter.create(_call(input="Hi"), Chat()))
        assert response.output_text == "Hello there, friend."
        with pytest.raises(InvalidRequest):
            await adapter.create(_call(input="x", previous_response_id=response.id), Chat())
        with pytest.raises(NotFound):
            await adapter.retrieve("t", response.id, input_items=False)
    finally:
        await store.close()


async def test_stored_responses_expire_after_ttl() -> None:
    # ttl 0: expired as soon as stored (the memory store checks expiry on read).
    adapter = ResponsesAdapter(FailOpenStore(MemoryStore()), ttl_s=0)
    response = _response(await adapter.create(_call(input="Hi"), Chat()))
    with pytest.raises(NotFound):
        await adapter.retrieve("t", response.id, input_items=False)
