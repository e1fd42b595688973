"""What a plugin sees: the `Call` going in and the `Reply` coming back.

A Call is built once per request at the edge and passed down the plugin chain. Its
`body` is the client's JSON as sent (gateway/payload.py) and `request` a typed view of
the fields the gateway reads (gateway/views.py). A plugin that changes the request
calls `call.edit(field=value)`: the copy it gets back has that top-level field set in
both, and every other field, known or not, still goes upstream as the client sent it.
Notes for later plugins go in `call.state`.

A Reply is one of three shapes: a complete JSON answer (`body`, a Payload), a stream
of server-sent events (`stream`, Chunks), or an answer that is not JSON at all
(`content`: bytes as they come, e.g. audio). A plugin that only reads headers or
counts tokens handles all three alike.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.payload import Chunk, Payload
from gateway.targets import ModelTarget
from gateway.views import ChatView, CompletionView, ModelOnly, RequestView, ResponsesView

# What a call asks for: the OpenAI operation ("chat.completions", "completions",
# "responses", "embeddings"), or "passthrough" for any other path forwarded as is.
Endpoint = str
CHAT, COMPLETIONS, RESPONSES, EMBEDDINGS, PASSTHROUGH = (
    "chat.completions",
    "completions",
    "responses",
    "embeddings",
    "passthrough",
)
GENERATION = frozenset({CHAT, COMPLETIONS})
VIEWS: dict[str, type[RequestView]] = {
    CHAT: ChatView,
    COMPLETIONS: CompletionView,
    RESPONSES: ResponsesView,
}


@dataclass(slots=True, kw_only=True)
class Call:
    endpoint: Endpoint
    body: Payload  # the request's JSON as the client sent it, with plugins' edits
    request: Any  # the typed view of `body`: VIEWS[endpoint], else views.ModelOnly
    model: str  # what the client asked for (the target's name)
    tenant: str = "default"  # from the API key (auth); plugins scope caches and limits by it
    headers: Mapping[str, str] = field(default_factory=dict)  # request headers, lower-case
    conversation_id: str | None = None  # x-conversation-id header
    target: ModelTarget | None = None  # what the model name routes to (set at the edge)
    request_id: str = ""  # x-request-id: the client's, or made at the edge
    # Passthrough calls: the path under /v1 ("/audio/speech"), the method and query
    # string, and a body that is not JSON (multipart forms, binary) forwarded as is.
    path: str = ""
    method: str = "POST"
    query: str = ""
    content: bytes | None = None
    content_type: str | None = None
    # Whether the client asked for the usage chunk of a stream. The gateway asks every
    # upstream for it (metrics, caches) and hides it from clients that did not.
    wants_usage: bool = True
    started: float = field(default_factory=time.perf_counter)
    # Scratch space shared by plugins for this call only (plugin instances are shared
    # by all calls and must keep no per-request state on themselves).
    state: dict[str, Any] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)  # added to the reply

    @property
    def stream(self) -> bool:
        return bool(getattr(self.request, "stream", False))

    def replace(self, **changes: Any) -> Call:
        """A copy with some fields changed; state and response_headers stay shared, so
        notes made downstream reach the plugins upstream of the change."""
        return dataclasses.replace(self, **changes)

    def edit(self, **fields: Any) -> Call:
        """A copy whose request body has these top-level fields set: plain data or msgspec
        structs; None removes the field (to OpenAI an absent optional field and a null
        are the same). The typed view follows; every other field is left as it was."""
        data = dict(self.body.data)
        for name, value in fields.items():
            if value is None:
                data.pop(name, None)
            else:
                data[name] = msgspec.to_builtins(value)
        view_type = type(self.request)
        known = _field_types(view_type)
        changes = {
            k: None if data.get(k) is None else msgspec.convert(data[k], known[k])
            for k in fields
            if k in known
        }
        request = msgspec.structs.replace(self.request, **changes) if changes else self.request
        return self.replace(body=Payload.of(data), request=request)


_FIELD_TYPES: dict[type[Any], dict[str, Any]] = {}


def _field_types(view_type: type[Any]) -> dict[str, Any]:
    found = _FIELD_TYPES.get(view_type)
    if found is None:
        found = _FIELD_TYPES[view_type] = {
            f.name: f.type for f in msgspec.structs.fields(view_type)
        }
    return found


def view_type(endpoint: Endpoint) -> type[Any]:
    return VIEWS.get(endpoint, ModelOnly)


def make_call(endpoint: Endpoint, data: dict[str, Any], **fields: Any) -> Call:
    """A Call for a request given as plain data, as the edge builds one (for tests and
    for plugins that issue calls of their own)."""
    body = Payload.of(data)
    request = msgspec.convert(data, view_type(endpoint))
    fields.setdefault("model", data.get("model") or "")
    return Call(endpoint=endpoint, body=body, request=request, **fields)


@dataclass(slots=True)
class Reply:
    body: Payload | None = None
    stream: AsyncIterator[Chunk] | None = None
    content: AsyncIterator[bytes] | None = None  # not JSON: bytes as they come
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    media_type: str | None = None  # of `content` (JSON and streams know their own)

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.body, self.stream, self.content)) != 1:
            raise ValueError("a Reply has exactly one of body, stream and content")

    @property
    def is_stream(self) -> bool:
        return self.stream is not None


async def close_stream(stream: AsyncIterator[Any]) -> None:
    """Closes an async generator now, running its `finally` blocks down the chain (so an
    upstream stops generating), rather than whenever the garbage collector gets to it."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
