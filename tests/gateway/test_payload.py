"""Payload and Chunk: bytes kept as received, decoded lazily, views of a few fields, frames
made only for what the gateway made itself."""

from __future__ import annotations

import msgspec
import pytest

from gateway.call import CHAT, make_call
from gateway.payload import Chunk, Payload
from gateway.views import AnswerView, ChatView


def test_received_bytes_are_kept_byte_for_byte() -> None:
    raw = b'{"b": 1.50,  "a":"\\u00fc", "unknown": {"x": [1, null]}}'
    payload = Payload.from_bytes(raw)
    assert payload.data == {"b": 1.5, "a": "ü", "unknown": {"x": [1, None]}}
    assert payload.raw is raw  # decoding does not re-encode


def test_a_view_reads_only_its_fields_and_is_kept() -> None:
    payload = Payload.from_bytes(b'{"id": "x", "usage": {"prompt_tokens": 3}, "extra": 1}')
    view = payload.view(AnswerView)
    assert view.id == "x" and view.usage is not None and view.usage.prompt == 3
    assert payload.view(AnswerView) is view
    with pytest.raises(msgspec.DecodeError):
        Payload.from_bytes(b"{not json").view(AnswerView)


def test_made_from_data_or_a_struct() -> None:
    assert Payload.of({"a": 1}).raw == b'{"a":1}'
    view = AnswerView(id="y")
    made = Payload.from_struct(view)
    assert made.view(AnswerView) is view  # its own type: no decoding
    assert made.data["id"] == "y"


def test_chunk_frames() -> None:
    assert Chunk.of({"a": 1}).frame == b'data: {"a":1}\n\n'
    assert Chunk.of({"a": 1}, "done").frame == b'event: done\ndata: {"a":1}\n\n'
    frame = b'id: 7\r\ndata: {"a":1}\r\n\r\n'
    received = Chunk.received(b'{"a":1}', frame)
    assert received.frame is frame and received.data == {"a": 1}


def test_edit_changes_one_field_and_keeps_the_rest() -> None:
    data = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi", "cache_control": {"type": "x"}}],
        "reasoning_effort": "low",
        "stream": True,
    }
    call = make_call(CHAT, data)
    edited = call.edit(stream_options={"include_usage": True}, stream=None)
    assert edited.body.data == {
        "model": "m",
        "messages": data["messages"],
        "reasoning_effort": "low",
        "stream_options": {"include_usage": True},
    }
    assert isinstance(edited.request, ChatView)
    assert edited.request.stream is None and edited.request.stream_options is not None
    assert call.body.data == data  # the original is untouched
