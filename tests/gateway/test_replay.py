"""Streams assembled into complete answers with every field kept, kept only when the
stream ended cleanly with every choice finished, and complete answers replayed as the
chunks a streaming client expects: assembled again they give back the same answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.payload import Chunk, Payload
from gateway.replay import Assembler, is_usage_only, record, replay
from tests.gateway.sources import Source

pytestmark = pytest.mark.anyio

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 5, "model": "m"}
TEXT_HEAD = {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m"}
USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def _chat(index: int = 0, finish: str | None = None, **delta: Any) -> Chunk:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return Chunk.of({**HEAD, "choices": [choice]})


def _token(text: str) -> dict[str, Any]:
    return {"token": text, "logprob": -0.5, "bytes": list(text.encode()), "top_logprobs": []}


def _piece(choice: dict[str, Any], head: dict[str, Any] = HEAD, **top: Any) -> Chunk:
    return Chunk.of({**head, **top, "choices": [choice]})


def _tool_stream() -> list[Chunk]:
    """One choice that writes text with logprobs, then two tool calls in pieces."""
    lp1 = {"content": [_token("Hel")], "refusal": None}
    lp2 = {"content": [_token("lo")]}
    opening = {"role": "assistant", "content": ""}
    call0 = {"index": 0, "id": "call_a", "type": "function"}
    call1 = {"index": 1, "id": "call_b", "type": "function"}
    return [
        _piece(
            {"index": 0, "delta": opening, "finish_reason": None, "stop_reason": None},
            system_fingerprint="fp_1",
        ),
        _piece({"index": 0, "delta": {"content": "Hel"}, "logprobs": lp1}),
        _piece(
            {"index": 0, "delta": {"content": "lo", "reasoning_content": "hm"}, "logprobs": lp2},
            x_trace={"hop": 1},
        ),
        _chat(tool_calls=[{**call0, "function": {"name": "f", "arguments": '{"a"'}}]),
        _chat(
            tool_calls=[
                {**call1, "function": {"name": "g", "arguments": ""}},
                {"index": 0, "function": {"arguments": ":1}"}},
            ]
        ),
        _chat(tool_calls=[{"index": 1, "function": {"arguments": "{}"}}]),
        _piece({"index": 0, "delta": {}, "finish_reason": "tool_calls", "stop_reason": 128008}),
        Chunk.of({**HEAD, "choices": [], "usage": USAGE}),
    ]


def _assemble(chunks: list[Chunk]) -> Assembler:
    assembler = Assembler()
    for chunk in chunks:
        assembler.feed(chunk)
    return assembler


def test_chat_chunks_assemble_content_tools_logprobs_and_unknown_fields() -> None:
    assembler = _assemble(_tool_stream())
    assert assembler.complete
    assert assembler.body() == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello",
                    "reasoning_content": "hm",
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "g", "arguments": "{}"},
                        },
                    ],
                },
                "logprobs": {"content": [_token("Hel"), _token("lo")], "refusal": None},
                "finish_reason": "tool_calls",
                "stop_reason": 128008,  # a later value replaces the first chunk's null
            }
        ],
        "usage": USAGE,
        "system_fingerprint": "fp_1",
        "x_trace": {"hop": 1},
    }


def test_choices_of_an_n_greater_than_one_stream_are_kept_apart_in_index_order() -> None:
    chunks = [
        _chat(1, role="assistant", content="B"),
        _chat(0, role="assistant", content="A"),
        _chat(0, content="a"),
        _chat(1, content="b"),
        _chat(1, finish="length"),
    ]
    assembler = _assemble(chunks)
    assert not assembler.complete  # choice 0 has not finished yet
    assembler.feed(_chat(0, finish="stop"))
    assert assembler.complete
    choices = assembler.body()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert [c["message"]["content"] for c in choices] == ["Aa", "Bb"]
    assert [c["finish_reason"] for c in choices] == ["stop", "length"]


def test_a_stream_without_a_usage_chunk_gets_zero_usage() -> None:
    body = _assemble([_chat(role="assistant", content="x", finish="stop")]).body()
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "x"}


def _text_stream() -> list[Chunk]:
    def lp(token: str, offset: int) -> dict[str, Any]:
        top = [{token: -0.1}]
        return {
            "tokens": [token],
            "token_logprobs": [-0.1],
            "top_logprobs": top,
            "text_offset": [offset],
        }

    return [
        _piece({"index": 0, "text": "Hel", "logprobs": lp("Hel", 0)}, TEXT_HEAD),
        _piece({"index": 0, "text": "lo", "logprobs": lp("lo", 3)}, TEXT_HEAD),
        _piece({"index": 0, "text": "", "finish_reason": "length", "stop_reason": None}, TEXT_HEAD),
        Chunk.of({**TEXT_HEAD, "choices": [], "usage": USAGE}),
    ]


def test_text_completion_chunks_join_text_and_append_legacy_logprobs() -> None:
    assembler = _assemble(_text_stream())
    assert assembler.complete and not assembler.chat
    assert assembler.body() == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 5,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "text": "Hello",
                "logprobs": {
                    "tokens": ["Hel", "lo"],
                    "token_logprobs": [-0.1, -0.1],
                    "top_logprobs": [{"Hel": -0.1}, {"lo": -0.1}],
                    "text_offset": [0, 3],
                },
                "finish_reason": "length",
                "stop_reason": None,
            }
        ],
        "usage": USAGE,
    }


def test_a_cut_off_stream_is_not_complete() -> None:
    assert not _assemble(_tool_stream()[:5]).complete
    assert not _assemble(_text_stream()[:2]).complete
    assert not Assembler().complete  # nothing at all


@pytest.mark.parametrize("data", [b"not json", b"[1, 2]"])
def test_an_unreadable_event_makes_the_stream_incomplete(data: bytes) -> None:
    chunks = _tool_stream()
    chunks.insert(2, Chunk.received(data, b"data: " + data + b"\n\n"))
    assembler = _assemble(chunks)
    assert assembler.unreadable and not assembler.complete


def test_only_a_chunk_with_usage_and_no_choices_is_usage_only() -> None:
    assert is_usage_only(Chunk.of({**HEAD, "choices": [], "usage": USAGE}))
    assert not is_usage_only(_chat(content="x"))
    assert not is_usage_only(Chunk.of({**HEAD, "choices": []}))
    assert not is_usage_only(Chunk.received(b"not json", b"data: not json\n\n"))


class Kept:
    def __init__(self) -> None:
        self.bodies: list[Payload] = []

    async def __call__(self, body: Payload) -> None:
        self.bodies.append(body)


async def test_record_passes_chunks_on_and_keeps_a_clean_complete_stream_once() -> None:
    chunks, kept = _tool_stream(), Kept()
    got = [c async for c in record(Source(chunks)(), kept)]
    assert all(a is b for a, b in zip(got, chunks, strict=True))  # passed on unchanged
    (body,) = kept.bodies
    assert body.data == _assemble(chunks).body()


async def test_record_keeps_nothing_when_the_stream_fails_midway() -> None:
    kept, upstream = Kept(), Source(_tool_stream(), fail=ConnectionError("upstream died"))
    got = []
    with pytest.raises(ConnectionError):
        async for chunk in record(upstream(), kept):
            got.append(chunk)
    assert len(got) == len(_tool_stream())  # every choice had finished, still not kept
    assert kept.bodies == []


async def test_record_keeps_nothing_for_a_stream_that_ends_cut_off() -> None:
    kept = Kept()
    got = [c async for c in record(Source(_tool_stream()[:4])(), kept)]
    assert len(got) == 4 and kept.bodies == []


@pytest.mark.parametrize("read", [1, len(_tool_stream())])
async def test_record_keeps_nothing_when_the_consumer_closes_it_early(read: int) -> None:
    kept, upstream = Kept(), Source(_tool_stream())
    stream = record(upstream(), kept)
    for _ in range(read):  # all chunks read still leaves the stream's end unseen
        await anext(stream)
    await stream.aclose()
    assert upstream.closed  # the upstream was closed at once, not left to the GC
    assert kept.bodies == []


async def _chunks(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [c async for c in stream]


def _same_but_created(again: dict[str, Any], body: dict[str, Any]) -> None:
    assert isinstance(again["created"], int)  # a replay is stamped when it is served
    assert {**again, "created": body["created"]} == body


async def test_replayed_chat_chunks_assemble_back_to_the_same_body_with_usage() -> None:
    body = _assemble(_tool_stream()).body()
    two = _assemble(
        [_chat(1, role="assistant", content="second", finish="stop"), *_tool_stream()]
    ).body()
    for answer in (body, two):
        chunks = await _chunks(replay(Payload.of(answer), include_usage=True))
        assert [is_usage_only(c) for c in chunks] == [False] * (len(chunks) - 1) + [True]
        assert all(c.data["object"] == "chat.completion.chunk" for c in chunks)
        again = _assemble(chunks)
        assert again.complete
        _same_but_created(again.body(), answer)


async def test_replayed_chat_without_usage_has_no_usage_chunk() -> None:
    body = _assemble(_tool_stream()).body()
    chunks = await _chunks(replay(Payload.of(body), include_usage=False))
    assert not any(is_usage_only(c) or "usage" in c.data for c in chunks)
    again = _assemble(chunks).body()
    _same_but_created({**again, "usage": body["usage"]}, body)


async def test_replayed_text_completion_assembles_back_to_the_same_body() -> None:
    body = _assemble(_text_stream()).body()
    with_usage = await _chunks(replay(Payload.of(body), include_usage=True))
    assert [is_usage_only(c) for c in with_usage] == [False, False, True]
    assert all(c.data["object"] == "text_completion" for c in with_usage)
    _same_but_created(_assemble(with_usage).body(), body)
    without = await _chunks(replay(Payload.of(body), include_usage=False))
    assert len(without) == 2 and not any("usage" in c.data for c in without)
    again = _assemble(without).body()
    _same_but_created({**again, "usage": body["usage"]}, body)


async def test_replay_starts_each_choice_with_its_role_and_ends_it_with_its_reason() -> None:
    body = _assemble(_tool_stream()).body()
    chunks = await _chunks(replay(Payload.of(body), include_usage=False, id="chatcmpl-new"))
    choices = [c.data["choices"][0] for c in chunks]
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    assert choices[-1]["finish_reason"] == "tool_calls" and choices[-1]["delta"] == {}
    assert all(c["finish_reason"] is None for c in choices[:-1])
    assert {c.data["id"] for c in chunks} == {"chatcmpl-new"}  # the id asked for
