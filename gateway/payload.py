"""JSON documents and server-sent events as they crossed the wire.

The gateway is a lossless proxy: what a client or an upstream sent is passed on as it
was, and only what the gateway reads is decoded. A `Payload` holds a JSON document's
bytes and decodes them on first use, either whole (`data`: plain dicts and lists, every
field kept, known or not) or as a view (`view(T)`: a msgspec struct of just the fields
T declares, the rest skipped without being built). A `Chunk` is one server-sent event:
its frame exactly as received, its event name, and its data as a Payload.

A document the gateway makes itself (the engine's answer, a cache's replay, a plugin's
change) starts from data or a struct and is encoded once, when its bytes are first
needed. Either way treat `data` as read-only: to change a document, make a new one
(`Payload.of({**old.data, "field": value})`).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_MISSING: Any = object()

DecodeErrors = (msgspec.DecodeError, msgspec.ValidationError)


def decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    """One cached msgspec decoder per type (building one costs more than using it)."""
    found = _decoders.get(type_)
    if found is None:
        found = _decoders[type_] = msgspec.json.Decoder(type_)
    return found


class Payload:
    __slots__ = ("_data", "_raw", "_struct", "_view", "_view_type")

    def __init__(
        self, raw: bytes | None = None, data: Any = _MISSING, struct: msgspec.Struct | None = None
    ) -> None:
        self._raw = raw
        self._data = data
        self._struct = struct
        self._view_type: Any = None
        self._view: Any = None

    @classmethod
    def from_bytes(cls, raw: bytes) -> Payload:
        """A document as received: passed on byte for byte unless someone changes it."""
        return cls(raw=raw)

    @classmethod
    def of(cls, data: Any) -> Payload:
        """A document made of plain data (dicts, lists, strings, numbers)."""
        return cls(data=data)

    @classmethod
    def from_struct(cls, struct: msgspec.Struct) -> Payload:
        """A document made from a msgspec struct (views of its own type cost nothing)."""
        return cls(struct=struct)

    @property
    def raw(self) -> bytes:
        """The document's JSON bytes."""
        if self._raw is None:
            source = self._struct if self._struct is not None else self._data
            self._raw = _encoder.encode(source)
        return self._raw

    @property
    def data(self) -> Any:
        """The whole document as plain data (decoded on first use; raises msgspec's
        DecodeError for bytes that are not JSON)."""
        if self._data is _MISSING:
            if self._struct is not None and self._raw is None:
                self._data = msgspec.to_builtins(self._struct)
            else:
                self._data = msgspec.json.decode(self.raw)
        return self._data

    def view(self, type_: type[T]) -> T:
        """The document decoded as `type_`, which declares only the fields wanted (the
        last view is kept, so asking twice costs once). Raises msgspec's DecodeError or
        ValidationError when the document does not fit."""
        if self._view_type is type_:
            return self._view  # type: ignore[no-any-return]
        if isinstance(self._struct, type_):
            value: T = self._struct
        else:
            value = decoder(type_).decode(self.raw)
        self._view_type, self._view = type_, value
        return value

    def __repr__(self) -> str:
        text = self.raw
        return f"{type(self).__name__}({text[:200]!r}{'...' if len(text) > 200 else ''})"


class Chunk(Payload):
    """One server-sent event. `frame` is the event's bytes as the upstream sent them
    (its `event:`/`data:`/`id:` lines and the blank line ending it), so an event the
    gateway only forwards reaches the client unchanged; an event made here is framed
    as `event: <name>` (when named) and `data: <json>`."""

    __slots__ = ("_frame", "event")

    def __init__(
        self,
        raw: bytes | None = None,
        data: Any = _MISSING,
        struct: msgspec.Struct | None = None,
        *,
        event: str | None = None,
        frame: bytes | None = None,
    ) -> None:
        super().__init__(raw, data, struct)
        self.event = event
        self._frame = frame

    @classmethod
    def of(cls, data: Any, event: str | None = None) -> Chunk:
        return cls(data=data, event=event)

    @classmethod
    def from_struct(cls, struct: msgspec.Struct, event: str | None = None) -> Chunk:
        return cls(struct=struct, event=event)

    @classmethod
    def received(cls, data: bytes, frame: bytes, event: str | None = None) -> Chunk:
        """An event read from an upstream: its data bytes and its whole frame."""
        return cls(raw=data, event=event, frame=frame)

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            head = b"" if self.event is None else b"event: " + self.event.encode() + b"\n"
            self._frame = head + b"data: " + self.raw + b"\n\n"
        return self._frame
