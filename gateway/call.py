"""What a plugin sees: the `Call` going in and the `Reply` coming back.

A Call is built once per request at the edge (route handler) and passed down the
plugin chain; a plugin may replace its request (`call.replace(request=...)`) or keep
notes for later plugins in `call.state`. A Reply is complete (`body`) or streamed
(`stream`, an async iterator of chunks): one type for both shapes, so a plugin that
only reads headers or counts tokens never has to care which it got.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
)
from gateway.targets import ModelTarget

Endpoint = Literal["chat.completions", "completions"]
GenerationRequest = ChatCompletionRequest | CompletionRequest
Body = ChatCompletion | Completion
Chunk = ChatCompletionChunk | Completion  # legacy completions stream Completion objects


@dataclass(slots=True, kw_only=True)
class Call:
    endpoint: Endpoint
    request: GenerationRequest
    tenant: str = "default"  # from the API key (auth); plugins scope caches and limits by it
    headers: Mapping[str, str] = field(default_factory=dict)  # request headers, lower-case
    conversation_id: str | None = None  # x-conversation-id header
    target: ModelTarget | None = None  # what the model name routes to (set at the edge)
    started: float = field(default_factory=time.perf_counter)
    # Scratch space shared by plugins for this call only (plugin instances are shared
    # by all calls and must keep no per-request state on themselves).
    state: dict[str, Any] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)  # added to the reply

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def stream(self) -> bool:
        return bool(self.request.stream)

    def replace(self, **changes: Any) -> Call:
        """A copy with some fields changed; state and response_headers stay shared, so
        notes made downstream reach the plugins upstream of the change."""
        return dataclasses.replace(self, **changes)


@dataclass(slots=True)
class Reply:
    body: Body | None = None
    stream: AsyncIterator[Chunk] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.body is None) == (self.stream is None):
            raise ValueError("a Reply has exactly one of body and stream")

    @property
    def is_stream(self) -> bool:
        return self.stream is not None


async def close_stream(stream: AsyncIterator[Any]) -> None:
    """Closes an async generator now, running its `finally` blocks down the chain (so an
    upstream stops generating), rather than whenever the garbage collector gets to it."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
