"""The official OpenAI SDK through a real `llm-gateway serve --config` (default chain) to
the scriptable mock upstream: request ids, embeddings served upstream, and the
Responses API proxied to an upstream that serves it, plain and streamed."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.gateway.proxy.conftest import EMBEDDER, control, seen

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(gateways: dict[str, str]) -> Iterator[openai.OpenAI]:
    """The SDK on the gateway with the default chain."""
    with openai.OpenAI(
        base_url=gateways["chained"] + "/v1", api_key="sk-test", max_retries=0
    ) as sdk:
        yield sdk


def test_raw_response_shows_the_request_id(client: openai.OpenAI, upstream: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model="m", messages=HI)
    rid = raw.headers["x-request-id"]
    completion = raw.parse()
    assert rid and completion._request_id == rid
    assert completion.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 "
    got = seen(upstream)
    assert got["last_headers"]["x-request-id"] == rid
    assert raw.headers["x-upstream-request-id"] == got["last_id"]


def test_embeddings_of_a_model_served_upstream(client: openai.OpenAI, upstream: str) -> None:
    # The SDK asks for base64 unless told otherwise, and decodes it: little-endian float32.
    vector = base64.b64encode(struct.pack("<3f", 0.5, -0.25, 1.0)).decode()
    answer = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": vector}],
        "model": EMBEDDER,
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    control(upstream, answer_b64=json.dumps(answer).encode())
    result = client.embeddings.create(model="emb", input="hello world")
    assert result.data[0].embedding == [0.5, -0.25, 1.0]
    assert result.model == EMBEDDER and result.usage.prompt_tokens == 2
    got = seen(upstream)
    assert got["last_path"] == "/v1/embeddings"
    body = {"model": EMBEDDER, "input": "hello world", "encoding_format": "base64"}
    assert got["last_body"] == body


# ---- the Responses API, served by the upstream ------------------------------------------------


def _message(status: str, text: str | None) -> dict[str, Any]:
    content = [] if text is None else [
        {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    ]  # fmt: skip
    return {"type": "message", "id": "msg_1", "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def _response(status: str = "completed") -> dict[str, Any]:
    """A Response object as OpenAI sends it (with a field the SDK does not know)."""
    done = status == "completed"
    usage = {
        "input_tokens": 9, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 11,
    }  # fmt: skip
    return {
        "id": "resp_1", "object": "response", "created_at": 1741476542, "status": status,
        "background": False, "error": None, "incomplete_details": None, "instructions": None,
        "max_output_tokens": 16, "model": "gpt-4.1-2025-04-14",
        "output": [_message("completed", "Hello there")] if done else [],
        "parallel_tool_calls": True, "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
        "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
        "usage": usage if done else None, "user": None, "metadata": {}, "x_vendor": [1.5, None],
    }  # fmt: skip


def _events() -> list[dict[str, Any]]:
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "annotations": [], "logprobs": []}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": _response("in_progress")},
        {"type": "response.in_progress", "response": _response("in_progress")},
        {"type": "response.output_item.added", "output_index": 0,
         "item": _message("in_progress", None)},
        {"type": "response.content_part.added", **where, "part": part | {"text": ""}},
        {"type": "response.output_text.delta", **where, "delta": "Hello", "logprobs": []},
        {"type": "response.output_text.delta", **where, "delta": " there", "logprobs": []},
        {"type": "response.output_text.done", **where, "text": "Hello there", "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part | {"text": "Hello there"}},
        {"type": "response.output_item.done", "output_index": 0,
         "item": _message("completed", "Hello there")},
        {"type": "response.completed", "response": _response()},
    ]  # fmt: skip
    return [e | {"sequence_number": i} for i, e in enumerate(events)]


EVENTS = _events()
FRAMES = [
    f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in EVENTS
]  # no [DONE]: a Responses stream ends with its last event
ANSWER = json.dumps(_response(), indent=1).encode()


def test_responses_are_proxied_as_answered(client: openai.OpenAI, upstream: str) -> None:
    control(upstream, answer_b64=ANSWER)
    raw = client.responses.with_raw_response.create(
        model="m", input="Say hello", max_output_tokens=16, extra_body={"x_future": {"a": None}}
    )
    assert raw.content == ANSWER
    response = raw.parse()
    assert response.output_text == "Hello there" and response.status == "completed"
    assert response.usage is not None and response.usage.total_tokens == 11
    got = seen(upstream)
    assert got["last_path"] == "/v1/responses"
    wanted = {"model": "m", "input": "Say hello", "max_output_tokens": 16, "x_future": {"a": None}}
    assert got["last_body"] == wanted


def test_response_streams_are_proxied_frame_for_frame(client: openai.OpenAI, upstream: str) -> None:
    control(upstream, events_b64=FRAMES)
    events = list(client.responses.create(model="m", input="Say hello", stream=True))
    assert [e.type for e in events] == [e["type"] for e in EVENTS]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    last = events[-1]
    assert last.type == "response.completed" and last.response.output_text == deltas
    assert seen(upstream)["last_body"]["stream"] is True
    with client.responses.with_streaming_response.create(
        model="m", input="Say hello", stream=True
    ) as raw:
        assert raw.headers["content-type"] == "text/event-stream"
        assert b"".join(raw.iter_bytes()) == b"".join(FRAMES)


@pytest.mark.parametrize("stream", [False, True])
def test_a_passed_through_response_is_retrieved_from_its_upstream(
    client: openai.OpenAI, upstream: str, stream: bool
) -> None:
    """The id names no model: the gateway noted which model's upstream made it."""
    if stream:
        control(upstream, events_b64=FRAMES)
        list(client.responses.create(model="m", input="Say hello", stream=True))
    else:
        control(upstream, answer_b64=ANSWER)
        client.responses.create(model="m", input="Say hello")
    control(upstream, answer_b64=ANSWER)  # what the upstream answers for its response
    again = client.responses.retrieve("resp_1")
    assert again.id == "resp_1" and again.output_text == "Hello there"
    got = seen(upstream)
    assert (got["last_method"], got["last_path"]) == ("GET", "/v1/responses/resp_1")
    deleted = json.dumps({"id": "resp_1", "object": "response", "deleted": True}).encode()
    control(upstream, answer_b64=deleted)
    client.responses.delete("resp_1")
    got = seen(upstream)
    assert (got["last_method"], got["last_path"]) == ("DELETE", "/v1/responses/resp_1")


def test_a_response_the_gateway_never_saw_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_unknown")
