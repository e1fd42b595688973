"""The seam between the gateway and whatever serves a model.

An upstream answers a typed OpenAI request with either a complete response or an
async iterator of chunks (when the request asked to stream). The in-process engine
and remote OpenAI-compatible servers implement the same protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from gateway.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
)

ChatResult = ChatCompletion | AsyncIterator[ChatCompletionChunk]
CompletionResult = Completion | AsyncIterator[Completion]


class Upstream(Protocol):
    # upstream_model: the name to send upstream when the config aliases the model
    # (remote servers); an in-process engine serves one model and ignores it.
    async def chat(
        self, request: ChatCompletionRequest, upstream_model: str | None = None
    ) -> ChatResult: ...

    async def complete(
        self, request: CompletionRequest, upstream_model: str | None = None
    ) -> CompletionResult: ...

    async def ready(self) -> bool:
        """Whether the upstream can take requests now."""
        ...

    async def close(self) -> None: ...
