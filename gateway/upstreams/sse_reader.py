"""Server-sent events read off an upstream's byte stream, without re-encoding them.

Bytes are fed as they arrive; each complete event (ended by a blank line, LF or CRLF)
becomes a Chunk that keeps its frame byte for byte, so the client can be sent exactly
what the upstream sent. Events without data (comments, `retry:`) carry nothing a
client acts on and are dropped; `data: [DONE]` ends an OpenAI stream and is reported
rather than passed on (the edge writes its own).
"""

from __future__ import annotations

from gateway.payload import Chunk

DONE = b"[DONE]"


class EventReader:
    __slots__ = ("_buffer", "done")

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False  # `data: [DONE]` was seen

    def feed(self, data: bytes) -> list[Chunk]:
        """The events that `data` completes, in order."""
        buffer = self._buffer + data if self._buffer else data
        events: list[Chunk] = []
        start = 0
        while True:
            lf = buffer.find(b"\n\n", start)
            crlf = buffer.find(b"\r\n\r\n", start)
            if lf < 0 and crlf < 0:
                break
            end = lf + 2 if crlf < 0 or 0 <= lf < crlf else crlf + 4
            chunk = self._event(buffer[start:end])
            if chunk is not None:
                events.append(chunk)
            start = end
        self._buffer = buffer[start:]
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet ended by a blank line (at the end: a cut-off stream)."""
        return self._buffer

    def _event(self, frame: bytes) -> Chunk | None:
        name: str | None = None
        data: list[bytes] = []
        for line in frame.split(b"\n"):
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
        if not data:
            return None
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        if payload == DONE:
            self.done = True
            return None
        return Chunk.received(payload, frame, name)
