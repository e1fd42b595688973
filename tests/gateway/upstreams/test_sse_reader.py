"""Server-sent events split off a byte stream as they complete, frames kept verbatim."""

from __future__ import annotations

from gateway.upstreams.sse_reader import EventReader


def test_events_split_across_reads_keep_their_frames() -> None:
    stream = (
        b'data: {"n":1}\n\n'
        b'event: response.delta\ndata: {"n":2}\n\n'
        b": keep-alive comment\n\n"
        b'id: 3\r\ndata: {"n":3}\r\n\r\n'
        b"data: [DONE]\n\n"
    )
    reader = EventReader()
    got = []
    for i in range(0, len(stream), 5):  # byte by byte-ish: events span reads
        got += reader.feed(stream[i : i + 5])
    assert [c.data for c in got] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [c.event for c in got] == [None, "response.delta", None]
    assert got[2].frame == b'id: 3\r\ndata: {"n":3}\r\n\r\n'
    assert (
        b"".join(c.frame for c in got)
        == stream.replace(b": keep-alive comment\n\n", b"")[: -len(b"data: [DONE]\n\n")]
    )
    assert reader.done and reader.pending == b""


def test_multi_line_data_is_joined_and_a_cut_event_is_pending() -> None:
    reader = EventReader()
    (chunk,) = reader.feed(b'data: {"a":\ndata: 1}\n\ndata: {"b"')
    assert chunk.data == {"a": 1}
    assert reader.pending == b'data: {"b"' and not reader.done
