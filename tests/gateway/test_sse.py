"""Server-sent events at the edge: every chunk's frame byte for byte, `data: [DONE]` at
the end when asked, and a failure after the start ending the stream with an error event
instead of `[DONE]`; the chunks' source is closed however the stream ends."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import pytest

from gateway.errors import SERVER_ERROR_MESSAGE, InvalidRequest, OpenAIError
from gateway.payload import Chunk
from gateway.sse import DONE, encode_sse, frame
from gateway.upstreams.sse_reader import EventReader
from tests.gateway.sources import Source

pytestmark = pytest.mark.anyio


async def _all(frames: AsyncIterator[bytes]) -> list[bytes]:
    return [f async for f in frames]


def test_frame_is_a_data_line_and_a_blank_line() -> None:
    assert frame(b'{"a":1}') == b'data: {"a":1}\n\n'


def test_frame_with_an_event_name_starts_with_an_event_line() -> None:
    assert frame(b'{"a":1}', b"error") == b'event: error\ndata: {"a":1}\n\n'


def test_done_is_the_openai_end_of_stream_event() -> None:
    assert DONE == b"data: [DONE]\n\n"


async def test_received_frames_pass_unchanged_and_done_ends_the_stream() -> None:
    upstream = (
        b'id: 7\r\ndata: {"n":1}\r\n\r\n'  # CRLF and an id line, kept as sent
        b'data: {"n":\ndata: 2}\n\n'  # data on two lines
        b'event: response.delta\ndata: {"n":3}\n\n'
    )
    chunks = EventReader().feed(upstream)
    source = Source(chunks)
    frames = await _all(encode_sse(source()))
    assert frames == [
        b'id: 7\r\ndata: {"n":1}\r\n\r\n',
        b'data: {"n":\ndata: 2}\n\n',
        b'event: response.delta\ndata: {"n":3}\n\n',
        b"data: [DONE]\n\n",
    ]
    assert source.closed


async def test_chunks_made_here_are_framed_as_data_and_named_events() -> None:
    chunks = [Chunk.of({"a": "x\ny"}), Chunk.of({"b": 2}, event="response.done")]
    frames = await _all(encode_sse(Source(chunks)()))
    assert frames == [
        b'data: {"a":"x\\ny"}\n\n',  # a newline in the JSON stays escaped: one data line
        b'event: response.done\ndata: {"b":2}\n\n',
        DONE,
    ]


async def test_done_false_ends_with_the_last_event_and_no_done() -> None:
    frames = await _all(encode_sse(Source([Chunk.of({"n": 1})])(), done=False))
    assert frames == [b'data: {"n":1}\n\n']


async def test_an_empty_stream_is_only_done() -> None:
    assert await _all(encode_sse(Source([])())) == [DONE]


async def test_an_openai_error_mid_stream_ends_it_with_the_error_and_no_done() -> None:
    error = InvalidRequest("context too long", param="messages", code="context_length")
    source = Source([Chunk.of({"n": 1})], fail=error)
    frames = await _all(encode_sse(source()))
    assert len(frames) == 2 and frames[0] == b'data: {"n":1}\n\n'
    assert frames[1].startswith(b"data: ") and frames[1].endswith(b"\n\n")
    assert json.loads(frames[1][len(b"data: ") : -2]) == {
        "error": {
            "message": "context too long",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length",
        }
    }
    assert source.closed


async def test_an_error_without_done_is_sent_as_a_named_error_event() -> None:
    source = Source([], fail=OpenAIError("upstream went away", code="x"))
    (only,) = await _all(encode_sse(source(), done=False))
    assert only.startswith(b"event: error\ndata: {") and only.endswith(b"}\n\n")
    assert json.loads(only[len(b"event: error\ndata: ") : -2])["error"]["code"] == "x"


async def test_any_other_failure_sends_a_generic_server_error_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source([Chunk.of({"n": 1})], fail=RuntimeError("secret internals"))
    with caplog.at_level(logging.ERROR, logger="gateway.sse"):
        frames = await _all(encode_sse(source(), request_id="req-42"))
    assert len(frames) == 2 and DONE not in frames
    error = json.loads(frames[1][len(b"data: ") : -2])["error"]
    assert error == {
        "message": SERVER_ERROR_MESSAGE,
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert b"secret internals" not in frames[1]  # logged, never shown to the client
    (record,) = caplog.records
    assert "req-42" in record.getMessage() and record.exc_info is not None


async def test_a_client_that_stops_reading_closes_the_source() -> None:
    source = Source([Chunk.of({"n": 1}), Chunk.of({"n": 2})])
    frames = encode_sse(source())
    assert await anext(frames) == b'data: {"n":1}\n\n'
    assert not source.closed
    await frames.aclose()  # the client went away
    assert source.closed  # the upstream generation is stopped, not left to the GC


async def test_an_iterator_without_aclose_is_framed_too() -> None:
    class Plain:
        def __init__(self) -> None:
            self.left = [Chunk.of({"n": 1})]

        def __aiter__(self) -> Plain:
            return self

        async def __anext__(self) -> Chunk:
            if not self.left:
                raise StopAsyncIteration
            return self.left.pop()

    assert await _all(encode_sse(Plain())) == [b'data: {"n":1}\n\n', DONE]
